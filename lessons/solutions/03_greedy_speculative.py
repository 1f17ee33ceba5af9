"""Lesson 3's exercises, solved: the bodies a learner writes in 03_greedy_speculative.ipynb."""


def my_accept_greedy(target_argmax, drafts):
    """Keep drafts while they equal the target's argmax; then the correction, or the bonus."""
    for j, x in enumerate(drafts):
        if x != target_argmax[j]:
            return j, int(target_argmax[j])  # the first miss: the target's own choice
    return len(drafts), int(target_argmax[len(drafts)])  # all kept: the last row is free


def my_rollback_length(kv_before, n_drafted, n_accepted):
    """The newest token and the accepted drafts stay; the rejected drafts go."""
    return kv_before + 1 + n_accepted
