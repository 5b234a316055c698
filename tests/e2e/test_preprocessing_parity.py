"""The agent preprocesses camera frames exactly as the trainer preprocessed its training data.

Same Animal-MNIST images, the trainer's ``preprocess`` on one side and the
agent's ``Preprocessor`` built from the bundle's input spec on the other, for
frames as a camera gives them (gray, BGR, and at another size than the model's).
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.runtime import Preprocessor
from corral import InputSpec
from trainer.data import load_dataset, preprocess

SPEC = InputSpec(name="input", shape=[None, 1, 28, 28], color="gray", scale=1 / 255)


def test_gray_frames_match_the_trainer_bit_for_bit() -> None:
    images, _ = load_dataset().split("test")
    expected = preprocess(images[:16])
    agent = Preprocessor(SPEC)
    out = np.empty((1, 28, 28), np.float32)
    for image, want in zip(images[:16], expected, strict=True):
        agent(image, out)
        np.testing.assert_array_equal(out, want)


def test_bgr_frames_from_a_colour_camera_become_the_same_gray_input() -> None:
    images, _ = load_dataset().split("test")
    agent = Preprocessor(SPEC)
    out = np.empty((1, 28, 28), np.float32)
    for image, want in zip(images[:16], preprocess(images[:16]), strict=True):
        agent(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), out)
        np.testing.assert_allclose(out, want, atol=1 / 255)


def test_a_larger_frame_is_resized_to_the_model_input() -> None:
    images, _ = load_dataset().split("test")
    agent = Preprocessor(SPEC)
    out = np.empty((1, 28, 28), np.float32)
    big = cv2.resize(images[0], (112, 112), interpolation=cv2.INTER_NEAREST)
    agent(big, out)
    np.testing.assert_allclose(out, preprocess(images[:1])[0], atol=1e-6)
