"""Lesson 2's exercises, solved: the bodies a learner writes in 02_memory_bound.ipynb."""


def my_weight_bytes(config):
    """Float32 bytes of every matrix one decoding step reads; the tied head counted once."""
    d, n_layers = config.hidden_size, config.num_hidden_layers
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    attention = 2 * q_width * d + 2 * kv_width * d  # q_proj, o_proj; k_proj, v_proj
    mlp = 3 * config.intermediate_size * d  # gate, up, down
    return 4 * (config.vocab_size * d + n_layers * (attention + mlp))


def my_bytes_per_token(config, context):
    """The weights, plus the keys and values the new token attends over (context + 1 positions)."""
    per_position = 2 * config.num_key_value_heads * config.head_dim * 4  # a key and a value
    positions = sum(
        min(context + 1, config.sliding_window) if config.is_sliding(i) else context + 1
        for i in range(config.num_hidden_layers)
    )
    return my_weight_bytes(config) + per_position * positions
