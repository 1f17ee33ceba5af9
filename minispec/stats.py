"""The numbers that say how well speculation went (Leviathan et al. 2023, sec. 3.1 and 3.3).

Notation: p = target, q = draft; k = tokens drafted per step; one step = one target forward.

- alpha: the probability that the target accepts a drafted token. For one position,
  alpha = sum_x min(p(x), q(x)) = 1 - TV(p, q) (Leviathan et al., Corollary 3.6). Measured as
  accepted / verified, where "verified" counts the drafted positions the rule actually tested
  (those after the first rejection in a step are never looked at).
  For a token tree (`speculative_generate(..., tree=N)`), the positions are the nodes of the
  accepted path that had children, and a position is accepted when the rule accepts one of its
  children (one of the siblings): alpha is the probability that a tree step goes one token
  deeper, which is the chain's alpha when every node has one child. `drafted` counts every
  node of the trees, so draft_acceptance (accepted / drafted) shows how much of a wide tree
  was used.
- tau: tokens emitted per target forward, counting the corrected or bonus token each step adds.
  Plain decoding has tau = 1.
- expected tau: if each draft is accepted independently with probability alpha, the tokens per
  step follow a capped geometric law with mean (1 - alpha^(k+1)) / (1 - alpha) (eq. 1). That is
  tokens per target call, not a speedup: wall-clock divides by (k c + 1), c = draft cost / target.
  For a tree, k is its node budget and the draft length of a step its depth (the longest
  drafted path): the formula then assumes every node down to that depth had children.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Stats:
    k: int
    steps: int = 0  # draft-verify steps, each one target forward that verifies
    drafted: int = 0  # tokens the drafter proposed (a tree: its nodes)
    verified: int = 0  # drafted positions the acceptance rule tested
    accepted: int = 0  # drafted tokens the target accepted
    emitted: int = 0  # tokens the steps emitted: accepted drafts + corrected/bonus tokens
    new_tokens: int = 0  # all new tokens, the one from the prefill included
    drafted_at: list[int] = field(default_factory=list)  # [i]: steps that drafted position i
    # (a tree: a node at depth i + 1)
    verified_at: list[int] = field(default_factory=list)  # [i]: steps that tested position i
    accepted_at: list[int] = field(default_factory=list)  # [i]: steps that accepted position i
    draft_lengths: list[int] = field(default_factory=list)  # tokens drafted, per step (a tree:
    # its depth, the longest drafted path)
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    decode_s: float = 0.0
    trace_s: float = 0.0  # of decode_s: writing the trace's records (0 without a trace)

    def __post_init__(self) -> None:
        for counts in (self.drafted_at, self.verified_at, self.accepted_at):
            counts.extend([0] * (self.k - len(counts)))

    def add_step(
        self,
        n_drafted: int,
        decisions: list[bool],
        n_emitted: int,
        draft_s: float,
        verify_s: float,
        depth: int | None = None,
    ) -> None:
        """Count one draft-verify step: decisions[i] says whether position i was accepted.

        depth: the longest drafted path, for a token tree of n_drafted nodes (a chain's is
        n_drafted, the default).
        """
        depth = n_drafted if depth is None else depth
        n_accepted = sum(decisions)  # decisions stop at the first rejection
        self.steps += 1
        self.drafted += n_drafted
        self.verified += len(decisions)
        self.accepted += n_accepted
        self.emitted += n_emitted
        self.draft_lengths.append(depth)
        for i in range(depth):
            self.drafted_at[i] += 1
        for i, ok in enumerate(decisions):
            self.verified_at[i] += 1
            self.accepted_at[i] += int(ok)
        self.draft_s += draft_s
        self.verify_s += verify_s

    @property
    def verify_forwards(self) -> int:
        """Target forwards that verified: one per step (`speculative.verify` is one pass)."""
        return self.steps

    @property
    def target_forwards(self) -> int:
        """Every call of the target: the prefill and the verifications."""
        return self.verify_forwards + 1

    @property
    def alpha(self) -> float:
        """Acceptance rate per tested draft position: the estimate of Leviathan's alpha."""
        return self.accepted / self.verified if self.verified else 0.0

    @property
    def draft_acceptance(self) -> float:
        """Share of drafted tokens that were used (lower than alpha: some are never tested)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tau(self) -> float:
        """Tokens per verifying target forward (the bonus/corrected token counted)."""
        return self.emitted / self.verify_forwards if self.verify_forwards else 0.0

    @property
    def expected_tau(self) -> float:
        """(1 - alpha^(k+1)) / (1 - alpha): tau if every step drafted k tokens, i.i.d. accepted."""
        return expected_tokens_per_forward(self.alpha, self.k)

    @property
    def expected_tau_as_drafted(self) -> float:
        """The same formula averaged over the draft lengths actually proposed (n-gram misses)."""
        if not self.draft_lengths:
            return 0.0
        total = sum(expected_tokens_per_forward(self.alpha, n) for n in self.draft_lengths)
        return total / len(self.draft_lengths)

    @property
    def acceptance_by_position(self) -> list[float | None]:
        """[i]: P(position i accepted | it was tested); None where it never was."""
        return [
            a / v if v else None for a, v in zip(self.accepted_at, self.verified_at, strict=True)
        ]

    @property
    def tokens_per_s(self) -> float:
        """Decode speed as plain `Generation` reports it: tokens after the first, per second."""
        n = self.new_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in (
            "verify_forwards",
            "target_forwards",
            "alpha",
            "draft_acceptance",
            "tau",
            "expected_tau",
            "expected_tau_as_drafted",
            "acceptance_by_position",
            "tokens_per_s",
        ):
            d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def expected_tokens_per_forward(alpha: float, k: int) -> float:
    """E[tokens per step] = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
