"""Training in plain NumPy with hand-written gradients: the MTP drafter's, one idea per module.

layers.py     forward and backward of RMSNorm, linear, GELU/GeGLU, RoPE, query-only
              attention and softmax cross-entropy
adam.py       the optimiser
recipe.py     how the drafter is made: data, sizes, training (the shipped drafter's defaults)
mtp_data.py   teacher-forced passes of the target over offline text: the training data
mtp.py        the drafter unrolled over its draft steps, its loss, the training loop
"""
