"""The colours and words a replay is shown with, in one place for every page that shows one.

The app (viz/) and the self-contained web page (`minispec.replay_html`) both read this module, so
a colour means the same thing in both, and a section is called the same in both. It sits in the
package, not in viz/, because the package must not import the app.

green = a draft the target accepted, red = the draft it rejected, grey = drafts never checked,
blue = the target's correction, purple = the target's bonus token, amber = the drafter (q),
slate = the target (p).
"""

from __future__ import annotations

COLOURS = {
    "accepted": "#16a34a",
    "rejected": "#dc2626",
    "unchecked": "#9ca3af",
    "corrected": "#2563eb",
    "bonus": "#9333ea",
    "first": "#64748b",
    "draft": "#d97706",  # q, and drafted tokens before the verdict
    "target": "#334155",  # p
}
TINTS = {  # light backgrounds for chips
    "accepted": "#dcfce7",
    "rejected": "#fee2e2",
    "unchecked": "#f3f4f6",
    "corrected": "#dbeafe",
    "bonus": "#f3e8ff",
    "first": "#e2e8f0",
    "draft": "#fef3c7",
    "target": "#e2e8f0",
}
NAMES = {  # what each colour means, as the legend says it
    "accepted": "accepted draft",
    "rejected": "rejected draft",
    "unchecked": "never checked",
    "corrected": "target's correction",
    "bonus": "bonus token",
    "first": "from the prompt's pass",
    "draft": "q: the drafter",
    "target": "p: the target",
}
SECTIONS = {  # the step view's headings; "draft" and "verify" go on with the step's counts
    "output": "The whole output",
    "context": "The context so far",
    "draft": "The drafter guesses",
    "verify": "One verification pass",
    "decide": "Accept or reject, guess by guess",
    "corrected": "The target's correction",
    "bonus": "The bonus token",
    "rollback": "Roll back the KV cache",
    "tree": "The drafter's tree",  # a tree step's headings, in its order
    "mask": "One pass over the tree, and its mask",
    "siblings": "Sibling by sibling",
    "compact": "Compact the KV cache",
}
VERDICTS = {True: "kept", False: "rejected"}  # what the acceptance rule did with a guess
NODE_COLOURS = {  # a tree node's verdict -> its colour's name in COLOURS (the root: "target")
    "accepted": "accepted",
    "rejected": "rejected",
    "untried": "unchecked",
}
