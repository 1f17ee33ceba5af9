"""Token trees: several drafted continuations, verified together in one target forward.

A chain of k guesses dies at its first wrong token. A drafter that is unsure often has the
target's choice among its next few candidates, so a tree keeps several of them: SpecInfer
(Miao et al. 2024), Medusa (Cai et al. 2024), EAGLE-2 (Li et al. 2024), Sequoia (Chen et al. 2024).

    node 0 = the newest token x (emitted, not yet in the target's cache): the root
    nodes 1..n: drafted tokens, each with a parent; a parent comes before its children

         x ── the ── cat ── sat           parents = [-1, 0, 1, 2, 0, 4, 1]
          └── a ── dog                    depths  = [ 0, 1, 2, 3, 1, 2, 2]
               the ── dog                 (node 6 "dog" is a second child of node 1 "the")

One forward reads all n + 1 nodes: node i goes into the cache's row base + i, but takes the
position base + depth(i) (its RoPE angle: where it would stand in its own path), and it attends
to the prefix and to its own ancestors only: `ancestor_mask`, the tree attention mask. Row i of
the output is then the target's prediction after the path root -> i, exactly (bit for bit) what
decoding that path one token at a time would give: the kernels read a query's keys in the same
order either way.

After the rule has walked the tree (`accept_tree_greedy`, `accept_tree_sampled`), the accepted
path's keys and values move to the rows right after the prefix (`compact`), and the cache is
what a plain decoding of the accepted text would have written. A chain is the tree in which
every node has one child (`chain`), and the rule on it is the chain's rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from minispec.acceptance import acceptance_probability, residual_distribution
from minispec.kv_cache import KVCache
from minispec.model import TreeMask
from minispec.sampling import sample

# How siblings were chosen, which decides the rule that may judge them (`accept_tree_sampled`).
TOP = "top"  # deterministically: the drafter's most likely tokens (greedy, or prompt lookup)
SAMPLED = "sampled"  # drawn from q without replacement, in the order drawn
PROPOSALS = (TOP, SAMPLED)


@dataclass
class TokenTree:
    """A drafted tree: node 0 is the root (the newest token), parents before children.

    Siblings are listed in the order the drafter proposed them, which is the order the
    sampled rule tries them. q, when sampling, holds for each node with children the
    drafter's distribution over those children (the one they were drawn from).
    """

    tokens: list[int]  # (n + 1,) tokens[0]: the root
    parents: list[int]  # (n + 1,) parents[0] = -1; parents[i] < i
    proposal: str = TOP  # `TOP` or `SAMPLED`
    q: dict[int, np.ndarray] = field(default_factory=dict)  # node -> (vocab,) q of its children
    logit_rows: dict[int, np.ndarray] = field(default_factory=dict)  # node -> its raw scores

    def __post_init__(self) -> None:
        check_tree(self.tokens, self.parents, self.proposal)

    @property
    def n_drafted(self) -> int:
        return len(self.tokens) - 1

    def children(self, node: int) -> list[int]:
        """The node's children, in the order they were proposed."""
        return [i for i, parent in enumerate(self.parents) if parent == node]


def check_tree(tokens: list[int], parents: list[int], proposal: str) -> None:
    """A tree that breaks these rules would silently verify the wrong paths: stop it loudly."""
    if len(tokens) != len(parents) or not parents or parents[0] != -1:
        raise ValueError("a token tree needs one parent per token and the root (-1) first")
    if any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
        raise ValueError("a token tree lists every parent before its children")
    if proposal not in PROPOSALS:
        raise ValueError(f"a token tree's proposal is one of {PROPOSALS}, got {proposal!r}")
    seen = set()
    for i in range(1, len(tokens)):
        if (parents[i], tokens[i]) in seen:
            raise ValueError(f"node {i} repeats a sibling's token {tokens[i]}")
        seen.add((parents[i], tokens[i]))


def chain(tokens: list[int]) -> TokenTree:
    """The chain root -> d_1 -> ... -> d_k as a tree: tokens = [newest, d_1, ..., d_k]."""
    return TokenTree(list(tokens), list(range(-1, len(tokens) - 1)))


def depths(parents: list[int]) -> np.ndarray:
    """(n + 1,) each node's distance from the root."""
    d = np.zeros(len(parents), np.int64)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def path_to(parents: list[int], node: int) -> list[int]:
    """The nodes root, ..., node, in order."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def ancestor_mask(parents: list[int]) -> np.ndarray:
    """The tree attention mask, (n + 1, n + 1) bool: row i is True at i and its ancestors.

    Node i may see exactly the tokens of its own path; its siblings and cousins are other
    futures. For a chain this is the causal (lower-triangular) mask.
    """
    n = len(parents)
    mask = np.zeros((n, n), np.bool_)
    for i in range(n):
        mask[i, path_to(parents, i)] = True
    return mask


def tree_mask(parents: list[int], base: int) -> TreeMask:
    """The `TreeMask` of a pass over every node, written from cache row `base` on."""
    return TreeMask(base, ancestor_mask(parents), base + depths(parents))


def compact(cache: KVCache, base: int, path: list[int]) -> None:
    """Keep the accepted path's keys and values, side by side after the prefix; drop the rest.

    path: the nodes kept (root first), as rows base + node of every layer. Node path[j] moves
    to row base + j, where its keys already belong: their RoPE angle is base + depth, and the
    depth of path[j] is j. In place, in increasing order: a node never moves up, so no row is
    overwritten before it has moved. The prefix is not touched.
    """
    for j, node in enumerate(path):
        if node != j:
            cache.keys[:, base + j] = cache.keys[:, base + node]
            cache.values[:, base + j] = cache.values[:, base + node]
    cache.truncate(base + len(path))


# ------------------------------------------------------------------ the rule at one node


@dataclass
class Trial:
    """One sibling tried at its node: an ordinary speculative step between p_i and q_i.

    p_i is the target after the siblings tried before were rejected (p_0 = p), q_i the
    proposal this sibling was drawn from (see `sibling_trials`).
    """

    token: int  # x
    p: float | None  # p_i(x); None for the greedy rule, which compares argmaxes only
    q: float | None  # q_i(x); None for the greedy rule
    accept_probability: float  # min(1, p_i(x) / q_i(x)); 1 or 0 greedy
    residual: np.ndarray | None  # (vocab,) p_{i+1}, the target after x's rejection (None if
    # accepted, or greedy)
    u: float | None = None  # the uniform draw; None in `sibling_trials` and greedy
    accepted: bool | None = None  # None in `sibling_trials`, which draws nothing


@dataclass
class SiblingVerdict:
    """The rule's walk through one node's children, stopped at the first acceptance."""

    accepted: int | None  # the index (in candidates) of the accepted sibling; None: all rejected
    trials: list[Trial]  # the siblings tried, in order; the accepted one last
    residual: np.ndarray | None  # (vocab,) when none was accepted: what the next token is drawn
    # from (None when one was accepted, or greedy)


def sibling_trials(
    p: np.ndarray, q: np.ndarray | None, candidates: Sequence[int], proposal: str
) -> list[Trial]:
    """Every candidate's trial, as if all before it were rejected: pure, no randomness.

    p: (vocab,) the target's distribution at the node; q: (vocab,) the drafter's, which
    SAMPLED candidates were drawn from without replacement, in this order (None for TOP).
    Trial i holds the probability that candidate i is accepted if it is tried, and p_{i+1}, the
    target after its rejection; the last trial's residual is what the next token is drawn from
    when every candidate is rejected. So the law of the emitted token is, exactly,

        P(x) = sum_i [prod_{l<i} (1 - a_l)] a_i [c_i = x] + [prod_l (1 - a_l)] p_m(x),

    which a test sums over every ordered draw of the candidates (`sibling_rule` draws it).
    """
    return walk_siblings(p, q, candidates, proposal, rng=None).trials


def sibling_rule(
    p: np.ndarray,
    q: np.ndarray | None,
    candidates: Sequence[int],
    proposal: str,
    rng: np.random.Generator,
) -> SiblingVerdict:
    """Multi-draft speculative sampling at one node: try the siblings in order, stop at the first
    accepted; if none is, the next token comes from `SiblingVerdict.residual`. The emitted
    token has exactly the target's distribution p.

    SAMPLED (candidates drawn from q without replacement, in the order drawn: SpecInfer, Miao et
    al. 2024, sec. 4.3 and Algorithm 2, "multi-step speculative sampling", as Sequoia, Chen et
    al. 2024, adapts it to draws without replacement): candidate c_i is accepted
    with min(1, p_i(c_i) / q_i(c_i)); on its rejection p_{i+1} = norm(max(p_i - q_i, 0)) and
    q_{i+1} = q_i without c_i, renormalised: the law the next candidate was drawn from.
    TOP (the drafter's top-b tokens, chosen deterministically: q_i is one-hot on c_i): c_i is
    accepted with p_i(c_i); on its rejection p_{i+1} = p_i with c_i zeroed, renormalised.

    Why this is exact, stage by stage: stage i is an ordinary speculative step between p_i and
    the proposal q_i the candidate came from, except that its "residual draw" is the rest of the
    walk. By the chain's theorem (Leviathan et al. 2023, Theorem 1) the stage emits p_i exactly
    if what follows a rejection emits p_{i+1}, and the next stage is again an ordinary step
    between p_{i+1} and q_{i+1} (any proposal will do: the theorem holds for every q). The last
    stage ends with a true draw from p_m; induction from the back gives p_0 = p. The rejected
    c_i can never be needed again: a rejection happens only where p_i(c_i) < q_i(c_i), so
    p_{i+1}(c_i) = 0, and removing it from q loses nothing.
    Each proposal needs its own q_i: with SAMPLED siblings, the ratio against the original q
    (the rule for siblings drawn independently, with replacement) is wrong, and a test shows by
    how much. TOP needs its one-hot q_i for the same reason: the candidates are not draws.
    A candidate that q_i gives probability 0 (drawn twice, or outside q's support) is refused.
    """
    return walk_siblings(p, q, candidates, proposal, rng)


def walk_siblings(
    p: np.ndarray,
    q: np.ndarray | None,
    candidates: Sequence[int],
    proposal: str,
    rng: np.random.Generator | None,
) -> SiblingVerdict:
    """`sibling_rule`'s walk (rng given), or `sibling_trials`' (rng None: reject every one)."""
    if proposal not in PROPOSALS:
        raise ValueError(f"a sibling proposal is one of {PROPOSALS}, got {proposal!r}")
    if proposal == SAMPLED and q is None:
        raise ValueError("sampled siblings need the q they were drawn from")
    p_i, q_rest, trials = p, q, []  # (vocab,) each
    for index, c in enumerate(candidates):
        q_i = q_rest if proposal == SAMPLED else one_hot_row(c, p.shape[0])
        if q_i[c] <= 0.0:
            raise ValueError(
                f"sibling {c} has probability 0 under the q it was drawn from: drawn twice, or "
                "outside q's support (a drafter must draw siblings without replacement from q)"
            )
        a = acceptance_probability(p_i, q_i, c)
        trial = Trial(int(c), float(p_i[c]), float(q_i[c]), a, None)
        trials.append(trial)
        if rng is not None:
            trial.u = float(rng.random())
            trial.accepted = trial.u < a  # P(u < a) = a for u ~ U[0, 1)
            if trial.accepted:
                return SiblingVerdict(index, trials, None)
        p_i = trial.residual = residual_distribution(p_i, q_i)
        if proposal == SAMPLED:
            q_rest = without(q_rest, c)
    return SiblingVerdict(None, trials, p_i)


def one_hot_row(token: int, vocab: int) -> np.ndarray:
    """(vocab,) all the mass on token: the q of a deterministic proposal."""
    q = np.zeros(vocab)
    q[token] = 1.0
    return q


def without(q: np.ndarray, token: int) -> np.ndarray:
    """q conditioned on not drawing token: the law of the next draw without replacement."""
    rest = q.copy()
    rest[token] = 0.0
    total = rest.sum()
    return rest / total if total > 0 else rest  # all zero: no sibling can follow


# ----------------------------------------------------------------- the rule over a tree


@dataclass
class TreeVerdict:
    """The rule's walk from the root: the accepted path, then one corrected or bonus token."""

    path: list[int]  # accepted nodes, root first: path[j] is the j-th accepted drafted token
    next_token: int  # corrected (no child of path[-1] accepted) or bonus (path[-1] is a leaf)
    kind: str  # "corrected" or "bonus"
    siblings: dict[int, SiblingVerdict]  # node on the path with children -> the rule there
    residual: np.ndarray | None = None  # (vocab,) what a sampled corrected token came from

    @property
    def n_accepted(self) -> int:
        return len(self.path) - 1

    @property
    def decisions(self) -> list[bool]:
        """One per node of the path that had children: was one of them accepted? The chain's
        decisions when every node has one child (`stats.Stats.add_step` counts them)."""
        return [True] * self.n_accepted + [False] * (self.kind == "corrected")


def accept_tree_greedy(tree: TokenTree, target_argmax: np.ndarray) -> TreeVerdict:
    """Temperature 0: from the root, move to the child that is the target's argmax.

    target_argmax: (n + 1,) argmax of the target's row at every node. At a node none of whose
    children is the argmax, emit the argmax ("corrected"); at a leaf, its argmax is the bonus.
    Output = plain greedy decoding's, as for the chain (`speculative.accept_greedy`).
    """
    path, siblings = [0], {}
    while True:
        node = path[-1]
        best, children = int(target_argmax[node]), tree.children(node)
        if not children:
            return TreeVerdict(path, best, "bonus", siblings)
        trials, accepted = [], None
        for index, child in enumerate(children):
            ok = tree.tokens[child] == best
            trials.append(Trial(tree.tokens[child], None, None, float(ok), None, None, ok))
            if ok:
                accepted = index
                break
        siblings[node] = SiblingVerdict(accepted, trials, None)
        if accepted is None:
            return TreeVerdict(path, best, "corrected", siblings)
        path.append(children[accepted])


def accept_tree_sampled(
    tree: TokenTree, p_rows: Sequence[np.ndarray], rng: np.random.Generator
) -> TreeVerdict:
    """Walk the tree with `sibling_rule` at each node: every emitted token has the target's law.

    p_rows: row i = the target's distribution after the path root -> i, shaped by
    `sampling.distribution` (pass `speculative.RowsOnDemand`: rows off the path are never
    read). At a node with children, the rule judges them with q = tree.q[node] (SAMPLED) or
    one-hot (TOP); an accepted child is the next node, and if none is, the next token is drawn
    from the rule's residual ("corrected"). At a leaf the bonus token is drawn from its row.
    Given the path so far each node is a fresh `sibling_rule`, so the tokens come out with
    the target's law one after the other. On a chain this is `speculative.accept_or_reject`,
    draw for draw.
    """
    path, siblings = [0], {}
    while True:
        node = path[-1]
        children = tree.children(node)
        if not children:
            return TreeVerdict(path, sample(p_rows[node], rng), "bonus", siblings)
        q = tree.q.get(node) if tree.proposal == SAMPLED else None
        candidates = [tree.tokens[c] for c in children]
        verdict = sibling_rule(p_rows[node], q, candidates, tree.proposal, rng)
        siblings[node] = verdict
        if verdict.accepted is None:
            token = sample(verdict.residual, rng)
            return TreeVerdict(path, token, "corrected", siblings, verdict.residual)
        path.append(children[verdict.accepted])
