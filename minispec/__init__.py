"""minispec: a readable NumPy reference of Gemma 3 and of speculative decoding."""
