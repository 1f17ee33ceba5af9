"""The lessons' exercises check themselves: `check_<exercise>(your_function)` prints a verdict.

Each check runs the learner's function on cases it makes up (random inputs from fixed seeds,
and the edge cases people miss) and prints one line:

    not yet: ...   the function still raises NotImplementedError (as the notebooks ship it)
    right: ...     it agrees with minispec on every case
    wrong: ...     a hint at the likely mistake, and the case that showed it

A check never raises: a crash inside the learner's function is reported as "wrong", with the
case it crashed on. The hints come from mistakes people really make (published implementations
made several of them): each check knows what each mistake would return, and names the one the
learner's answer matches. Answers: lessons/solutions/. tests/test_exercises.py holds every check
to those answers and to the wrong versions.

Layout: `judging` holds the machinery every check shares (cases, verdicts, naming the
mistake); `lesson1` ... `lesson5` hold each lesson's checks, one module per notebook. Every
public name is re-exported here, so `exercises.check_rms_norm` works as the notebooks write it.
"""

from minispec.exercises.judging import (
    Case,
    Wrong,
    array_reader,
    as_array,
    attempt,
    close,
    fmt,
    judge,
    largest_difference,
    name_mistake,
    name_of,
    number,
    number_reader,
    report,
    same_array,
    same_number,
    same_value,
)
from minispec.exercises.lesson1 import (
    check_rms_norm,
    check_rope,
    grade_rms_norm,
    grade_rope,
    rope_interleaved,
    rope_variant,
)
from minispec.exercises.lesson2 import (
    FLOAT32,
    check_bytes_per_token,
    check_weight_bytes,
    config_cases,
    grade_bytes_per_token,
    grade_weight_bytes,
    kv_bytes_read,
    show_bytes,
    weight_bytes_answers,
    weight_parts,
)
from minispec.exercises.lesson3 import (
    check_accept_greedy,
    check_rollback_length,
    grade_accept_greedy,
    grade_rollback_length,
    greedy_inputs,
    greedy_mistakes,
)
from minispec.exercises.lesson4 import (
    ANYTHING_ELSE,
    check_accept_or_reject,
    check_residual,
    check_shape_both,
    distribution_inputs,
    emitted_distribution,
    grade_accept_or_reject,
    grade_residual,
    grade_shape_both,
    total_variation,
)
from minispec.exercises.lesson5 import (
    AT_ONE,
    AttentionInput,
    attention_inputs,
    attention_mistakes,
    attention_variant,
    best_k,
    best_k_answers,
    best_k_inputs,
    check_best_k,
    check_expected_tau,
    check_query_only_attention,
    fastest,
    grade_best_k,
    grade_expected_tau,
    grade_query_only_attention,
    step_speed,
    target_attention,
)

__all__ = [
    "ANYTHING_ELSE",
    "AT_ONE",
    "AttentionInput",
    "Case",
    "FLOAT32",
    "Wrong",
    "array_reader",
    "as_array",
    "attempt",
    "attention_inputs",
    "attention_mistakes",
    "attention_variant",
    "best_k",
    "best_k_answers",
    "best_k_inputs",
    "check_accept_greedy",
    "check_accept_or_reject",
    "check_best_k",
    "check_bytes_per_token",
    "check_expected_tau",
    "check_query_only_attention",
    "check_residual",
    "check_rms_norm",
    "check_rollback_length",
    "check_rope",
    "check_shape_both",
    "check_weight_bytes",
    "close",
    "config_cases",
    "distribution_inputs",
    "emitted_distribution",
    "fastest",
    "fmt",
    "grade_accept_greedy",
    "grade_accept_or_reject",
    "grade_best_k",
    "grade_bytes_per_token",
    "grade_expected_tau",
    "grade_query_only_attention",
    "grade_residual",
    "grade_rms_norm",
    "grade_rollback_length",
    "grade_rope",
    "grade_shape_both",
    "grade_weight_bytes",
    "greedy_inputs",
    "greedy_mistakes",
    "judge",
    "kv_bytes_read",
    "largest_difference",
    "name_mistake",
    "name_of",
    "number",
    "number_reader",
    "report",
    "rope_interleaved",
    "rope_variant",
    "same_array",
    "same_number",
    "same_value",
    "show_bytes",
    "step_speed",
    "target_attention",
    "total_variation",
    "weight_bytes_answers",
    "weight_parts",
]
