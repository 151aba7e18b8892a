"""The names ``--model`` accepts besides a checkpoint path. No torch here: the Function app checks uploads against them."""

PRETRAINED_STYLES = ("candy", "mosaic", "rain_princess", "udnie")
BUILTIN_MODELS = ("identity", "random")
