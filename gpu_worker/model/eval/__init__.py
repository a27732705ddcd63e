"""Evaluation of a trained model (METHOD.md 5), one concern per module.

The data's path (``gpu_worker.model.evaluate.evaluate_model`` is the entry point and writes metrics.json):

- ``context``: what every part shares: the loaded model, its dataset and datamanager, the AVE towers,
  the output folder, notes, previews and progress; which torso the frames are rendered with.
- ``self_driven``: renders the validation frames (their own pose, expression and audio) and feeds
  - ``reconstruction``: PSNR / SSIM / portrait PSNR against ``gt/`` (person over the plate) and
    ``frames/`` (the real crops),
  - ``landmarks``: LMD and eye agreement, render and truth each through its own face tracker,
  - ``sync``: the AVE sync confidence of the rendered (and the truth's) mouth crops.
- ``new_audio``: renders new speech with poses from the training frames and feeds ``sync``: mouth
  opening against the speech envelope and the truth's lip gap, AVE sync confidence.

Importing this package loads nothing heavy.
"""
