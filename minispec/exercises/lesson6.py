"""Lesson 6's checks (lessons/06_token_trees.ipynb): the tree attention mask, the sibling rule.

Notation as in Leviathan et al. 2023: p = target distribution, q = draft distribution. A token
tree lists each node's parent (`parents[0] = -1`: the root, the newest token).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from minispec.exercises.judging import (
    Case,
    Wrong,
    as_array,
    close,
    fmt,
    judge,
    name_of,
    report,
)
from minispec.tree import SAMPLED, TOP, ancestor_mask, depths, sibling_trials

# ------------------------------------------------------------------- the tree attention mask


def check_ancestor_mask(fn: Callable) -> None:
    """fn(parents) = the tree attention mask, (n, n) bool: row i is True at node i itself and
    at every ancestor of i (its parent, its parent's parent, ..., the root), False elsewhere."""
    report(fn, grade_ancestor_mask)


# (name, parents): every parent comes before its children, node 0 is the root
MASK_TREES = [
    ("the tree of minispec/tree.py's docstring, parents [-1, 0, 1, 2, 0, 4, 1, 5]",
     [-1, 0, 1, 2, 0, 4, 1, 5]),
    ("an EAGLE-2 style tree, parents [-1, 0, 0, 0, 1, 1, 2, 4]", [-1, 0, 0, 0, 1, 1, 2, 4]),
    ("a deep tree whose nodes are not in depth order, parents [-1, 0, 1, 1, 3, 0, 5, 4, 2]",
     [-1, 0, 1, 1, 3, 0, 5, 4, 2]),
    ("four siblings under the root, parents [-1, 0, 0, 0, 0]", [-1, 0, 0, 0, 0]),
    ("a chain, parents [-1, 0, 1, 2, 3]", [-1, 0, 1, 2, 3]),
    ("the root alone, parents [-1]", [-1]),
]  # fmt: skip

NO_SELF = (
    "a node sees itself too: put True on the diagonal (its own key and value are part of its "
    "path, as in the causal mask of a chain)"
)
PARENT_ONLY = (
    "a node sees every ancestor, not only its parent: walk parents[i], parents[parents[i]], ... "
    "up to the root (`tree.path_to`)"
)
TRANSPOSED = (
    "row i holds the nodes query i may read, its ancestors; you have the transpose, True at "
    "i's descendants (mask[i, j] is True when j is an ancestor of i)"
)
CAUSAL = (
    "a tree is not a chain: the causal (lower-triangular) mask would let a node see its "
    "siblings and cousins listed before it, which are other futures; only its own path"
)
NO_ROOT = (
    "the root (node 0, the newest token) is an ancestor of every node: keep walking until "
    "parents[i] is -1, not until it is 0"
)
BY_DEPTH = (
    "a shallower node is not always an ancestor: a node sees the nodes on its own path only, "
    "not every node of a smaller depth"
)
ADDITIVE = (
    "return booleans, True where the node may attend: an additive mask of 0 and -inf (what "
    "vLLM's tree_attn.py builds) says the same, but this exercise asks for True/False"
)


def mask_mistakes(parents: list[int]) -> dict[str, np.ndarray]:
    """What each mistake returns on a tree (the right answer where a mistake changes nothing)."""
    right = ancestor_mask(parents)
    n = len(parents)
    eye = np.eye(n, dtype=bool)
    parent_only = eye.copy()
    for i in range(1, n):
        parent_only[i, parents[i]] = True
    no_root = right.copy()
    no_root[1:, 0] = False
    d = depths(parents)
    by_depth = (d[None, :] < d[:, None]) | eye
    return {
        NO_SELF: right & ~eye,
        PARENT_ONLY: parent_only,
        TRANSPOSED: right.T.copy(),
        CAUSAL: np.tril(np.ones((n, n), dtype=bool)),
        NO_ROOT: no_root,
        BY_DEPTH: by_depth,
    }


def grade_ancestor_mask(fn: Callable) -> str:
    cases = [
        Case(name, (list(parents),), ancestor_mask(parents), mask_mistakes(parents))
        for name, parents in MASK_TREES
    ]

    def read(got: object, case: Case) -> np.ndarray:
        n = len(case.args[0])
        arr = as_array(got, (n, n), fn, case.name)
        if np.isinf(arr).any():
            raise Wrong(ADDITIVE)
        if not np.isin(arr, (0.0, 1.0)).all():
            raise Wrong(f"{name_of(fn)} returned values other than True/False ({case.name})")
        return arr.astype(bool)

    def same(got: np.ndarray, want: object, case: Case) -> bool:
        return want is not None and np.array_equal(got, want)

    def show(case: Case, got: np.ndarray) -> str:
        rows = [i for i in range(len(got)) if not np.array_equal(got[i], case.want[i])]
        i = rows[0]
        return (
            f"on {case.name}, row {i} should be {fmt(case.want[i].astype(int))}, "
            f"got {fmt(got[i].astype(int))}"
        )

    judge(fn, cases, read, same, show)
    return (
        f"{name_of(fn)} is the tree attention mask (`tree.ancestor_mask`) on {len(cases)} trees, "
        "from a lone root to a chain, a star and trees not listed in depth order"
    )


# ------------------------------------------------------------------------ the sibling rule


def check_sibling_rule(fn: Callable) -> None:
    """fn(p, q, candidates, proposal) = (accept, residual): the rule at one node.

    accept[i]: the probability that candidate i is accepted if it is tried (every candidate
    before it was rejected); residual: what the next token is drawn from when all are rejected.
    proposal "sampled" (drawn from q without replacement, in order): accept c_i with
    min(1, p_i(c_i) / q_i(c_i)); on rejection p_{i+1} = norm(max(p_i - q_i, 0)) and q_{i+1} = q_i
    without c_i, renormalised. proposal "top" (the drafter's most likely tokens, chosen, not
    drawn): q_i is one-hot on c_i, so accept with p_i(c_i); on rejection zero p_i(c_i) and
    renormalise. p_0 = p, q_0 = q.
    """
    report(fn, grade_sibling_rule)


def sibling_answer(
    p: np.ndarray, q: np.ndarray, candidates: Sequence[int], proposal: str
) -> tuple[np.ndarray, np.ndarray]:
    """The package's rule (`tree.sibling_trials`) in the exercise's shape: (accept, residual)."""
    trials = sibling_trials(p, q if proposal == SAMPLED else None, candidates, proposal)
    return np.array([t.accept_probability for t in trials]), trials[-1].residual


def norm(x: np.ndarray) -> np.ndarray:
    total = x.sum()
    return x / total if total > 0 else x


def sibling_variant(
    p: np.ndarray,
    q: np.ndarray,
    candidates: Sequence[int],
    proposal: str,
    renorm_p: bool = True,
    remove_q: bool = True,
    renorm_q: bool = True,
    top_rule: str = "one-hot",
    zero_top: bool = True,
    sampled_with_p: bool = False,
    update_p: bool = True,
    swapped: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The rule written plainly, or with one mistake (the flags), in float64.

    renorm_p False: p_{i+1} = max(p_i - q_i, 0) left unnormalised. remove_q False: sampled
    siblings keep the original q (the rule for independent draws). renorm_q False: the tried
    sibling is zeroed in q but q is not renormalised. top_rule "chain": top siblings judged by
    p_i / q with the drafter's q, tried ones left in q; "sampled": top siblings judged as if
    drawn from q. zero_top False: a rejected top sibling stays in p. sampled_with_p: sampled
    siblings judged as top ones. update_p False: every sibling judged against the original p.
    swapped: min(1, q/p).
    """
    sampled = proposal == SAMPLED and not sampled_with_p
    if proposal == TOP and top_rule != "one-hot":
        sampled, remove_q = True, top_rule == "sampled"
    p_i, q_rest = np.asarray(p, np.float64), np.asarray(q, np.float64)
    accept, residual = [], p_i
    for c in candidates:
        if sampled:
            q_i = q_rest
        else:
            q_i = np.zeros_like(p_i)
            q_i[c] = 1.0
        judged = p_i if update_p else np.asarray(p, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = q_i[c] / judged[c] if swapped else judged[c] / q_i[c]
        accept.append(min(1.0, ratio) if np.isfinite(ratio) else 1.0)
        if sampled or zero_top:
            left = np.maximum(judged - q_i, 0.0)
            residual = norm(left) if renorm_p else left
        else:
            residual = judged
        p_i = residual
        if sampled and remove_q:
            q_rest = q_rest.copy()
            q_rest[c] = 0.0
            if renorm_q:
                q_rest = norm(q_rest)
    return np.array(accept), residual


P_NOT_NORMALISED = (
    "after a rejection renormalise: p_{i+1} = norm(max(p_i - q_i, 0)) is a distribution, and "
    "the next sibling is judged against it"
)
Q_KEPT = (
    "a sampled sibling was drawn from q without replacement: after c_i is rejected the next one "
    "came from q without c_i, renormalised; judging it against the original q is the rule for "
    "independent draws (SpecInfer's Algorithm 2), and its output is not p here"
)
Q_NOT_NORMALISED = (
    "removing c_i from q leaves q_i minus one token: renormalise it, q_{i+1} = q_i / (1 - "
    "q_i(c_i)) off c_i, the law of the next draw"
)
TOP_CHAIN = (
    "top siblings are not draws from q: the chain's test p_i / q with the drafter's q (tried "
    "ones left in q) does not emit p. They were chosen, so q_i is one-hot on c_i: accept with "
    "p_i(c_i)"
)
TOP_AS_SAMPLED = (
    "top siblings are not draws from q, even with the tried ones removed: they were chosen, so "
    "q_i is one-hot on c_i and the test is p_i(c_i) alone"
)
TOP_NOT_ZEROED = (
    "after a top sibling c is rejected, the target may no longer emit c there: zero p_i(c) and "
    "renormalise (the residual against a one-hot q)"
)
SAMPLED_WITH_P = (
    "a sampled sibling was drawn from q: accept it with min(1, p_i(c_i) / q_i(c_i)), not with "
    "p_i(c_i), which is the rule for top siblings only"
)
P_NOT_UPDATED = (
    "each sibling is judged against what is left of p after the rejections before it, p_i, "
    "not against p again"
)
SWAPPED = (
    "accept with min(1, p_i(c) / q_i(c)), p the target (Chen et al. swap the letters, so q/p "
    "there means the same thing)"
)
FORGOT_MAX = (
    "clip at zero, max(p_i - q_i, 0): where q covers more than p there is nothing left to give, "
    "and p_i - q_i sums to 0, so dividing it by its sum blows up"
)
ABOVE_ONE = "an acceptance probability is min(1, ...): it cannot exceed 1"


def sibling_mistakes(
    p: np.ndarray, q: np.ndarray, candidates: Sequence[int], proposal: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What each mistake returns on a case (the right answer where it changes nothing)."""

    def v(**flags: object) -> tuple[np.ndarray, np.ndarray]:
        return sibling_variant(p, q, candidates, proposal, **flags)

    return {
        P_NOT_NORMALISED: v(renorm_p=False),
        Q_KEPT: v(remove_q=False),
        Q_NOT_NORMALISED: v(renorm_q=False),
        TOP_CHAIN: v(top_rule="chain"),
        TOP_AS_SAMPLED: v(top_rule="sampled"),
        TOP_NOT_ZEROED: v(zero_top=False),
        SAMPLED_WITH_P: v(sampled_with_p=True),
        P_NOT_UPDATED: v(update_p=False),
        SWAPPED: v(swapped=True),
    }


# (name, p, q, candidates, proposal): vocabularies of 6, where every mistake changes the answer
P_A, Q_A = [0.2, 0.25, 0.05, 0.15, 0.1, 0.25], [0.25, 0.2, 0.1, 0.1, 0.15, 0.2]
P_B, Q_B = [0.1, 0.2, 0.2, 0.25, 0.1, 0.15], [0.35, 0.05, 0.15, 0.15, 0.15, 0.15]
P_C, Q_C = [0.25, 0.1, 0.15, 0.1, 0.25, 0.15], [0.2, 0.2, 0.1, 0.15, 0.2, 0.15]
SIBLING_CASES = [
    ("3 siblings [0, 5, 1] drawn from q without replacement", P_A, Q_A, [0, 5, 1], SAMPLED),
    ("3 siblings [0, 2, 3] drawn from q without replacement", P_B, Q_B, [0, 2, 3], SAMPLED),
    ("2 siblings [1, 0] drawn from q without replacement", P_C, Q_C, [1, 0], SAMPLED),
    ("the top 3 siblings [0, 1, 5] of q", P_A, Q_A, [0, 1, 5], TOP),
    ("the top 3 siblings [0, 2, 3] of q", P_B, Q_B, [0, 2, 3], TOP),
    ("the top 2 siblings [0, 1] of q", P_C, Q_C, [0, 1], TOP),
    ("one sibling [1] drawn from q (the chain's rule)", P_C, Q_C, [1], SAMPLED),
]


def emitted_law(accept: np.ndarray, residual: np.ndarray, candidates: Sequence[int]) -> np.ndarray:
    """P(the node emits x): candidate i is tried if all before it were rejected, and accepted
    with accept[i]; if all are rejected the token is drawn from residual."""
    law, reach = np.zeros(len(residual)), 1.0
    for c, a in zip(candidates, accept, strict=True):
        law[c] += reach * a
        reach *= 1.0 - a
    return law + reach * np.asarray(residual, np.float64)


def ordered_draws(q: np.ndarray, m: int) -> Iterator[tuple[list[int], float]]:
    """Every ordered draw of m tokens from q without replacement, with its probability."""
    for seq in itertools.permutations(np.flatnonzero(q).tolist(), m):
        prob, left = 1.0, 1.0
        for c in seq:
            prob *= q[c] / left
            left -= q[c]
        yield list(seq), prob


def rule_law(rule: Callable, p: np.ndarray, q: np.ndarray, m: int, proposal: str) -> np.ndarray:
    """The exact law of the token a node emits under rule(p, q, candidates, proposal) ->
    (accept, residual): summed over every ordered draw of m siblings from q (sampled), or for
    q's m most likely tokens (top)."""
    if proposal == TOP:
        top = np.argsort(-q, kind="stable")[:m].tolist()
        return emitted_law(*rule(p, q, top, TOP), top)
    return sum(
        prob * emitted_law(*rule(p, q, seq, SAMPLED), seq) for seq, prob in ordered_draws(q, m)
    )


def grade_sibling_rule(fn: Callable) -> str:
    cases = []
    for name, p, q, candidates, proposal in SIBLING_CASES:
        p, q = np.array(p), np.array(q)
        want = sibling_answer(p, q, candidates, proposal)
        mistakes = sibling_mistakes(p, q, candidates, proposal)
        cases.append(Case(name, (p, q, list(candidates), proposal), want, mistakes))

    def read(got: object, case: Case) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise Wrong(
                f"{name_of(fn)} must return (accept, residual), got {type(got).__name__} "
                f"({case.name})"
            )
        accept = as_array(got[0], case.want[0].shape, fn, case.name)
        residual = as_array(got[1], case.want[1].shape, fn, case.name)
        if np.isnan(residual).any() or (residual < -1e-12).any() or (accept < -1e-12).any():
            raise Wrong(f"{FORGOT_MAX} ({case.name})")
        if (accept > 1 + 1e-9).any():
            raise Wrong(f"{ABOVE_ONE} ({case.name}: accept {fmt(accept)})")
        return accept, residual

    def same(got: tuple, want: tuple | None, case: Case) -> bool:
        return want is not None and all(close(g, w) for g, w in zip(got, want, strict=True))

    def show(case: Case, got: tuple) -> str:
        (accept, residual), (want_accept, want_residual) = got, case.want
        p, q = case.args[:2]
        where = f"{case.name}, p = {fmt(p)}, q = {fmt(q)}"
        if not close(accept, want_accept):
            return f"{where}: accept should be {fmt(want_accept)}, got {fmt(accept)}"
        total = float(residual.sum())
        summed = f" (it sums to {total:.3f}, not 1)" if abs(total - 1) > 1e-6 else ""
        return f"{where}: the residual should be {fmt(want_residual)}, got {fmt(residual)}{summed}"

    judge(fn, cases, read, same, show)
    worst = 0.0
    for _, p, q, candidates, proposal in SIBLING_CASES:
        p, q = np.array(p), np.array(q)
        law = rule_law(fn, p, q, len(candidates), proposal)
        worst = max(worst, float(np.abs(law - p).max()))
    return (
        f"{name_of(fn)} is the sibling rule (`tree.sibling_trials`) on {len(cases)} cases, top "
        "and sampled; summed over every ordered draw of the siblings, the token it emits has the "
        f"target's law p to within {worst:.0e}"
    )
