"""coinlib: the library behind the COIN companion notebooks.

One module per concept (see docs/development.md, "The library"). Glossary used in code, notebooks
and README alike:

- ``x``: an image, (B, 1, H, W) in [-1, 1]
- ``x_cf``: its counterfactual (the inpainted, "normal" version), same shape and range
- ``diff_map``: |x - x_cf| on the [0, 1] scale
- ``mask_pred``: the weak mask (thresholded and post-processed ``diff_map`` or saliency map)
- ``mask_true``: the ground-truth lesion mask (synthetic anomaly or tumour)
- ``p_abnormal``: the classifier's probability f(x) that the slice is abnormal
"""

__version__ = "0.1.0"
