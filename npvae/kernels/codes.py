"""Integer codes shared by both kernel backends."""
ACT_NAMES = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus")
ACT_CODES = {name: i for i, name in enumerate(ACT_NAMES)}
