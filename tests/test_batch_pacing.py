"""How a batch that owes many outputs paces its polls (batches._pause)."""

from __future__ import annotations

import pytest

from redun_modal_executor.backends.modal.batches import (
    OUTPUTS_PER_POLL,
    PACE_SECONDS,
    PACED_OWED,
    _pause,
)


def test_a_batch_owing_few_outputs_polls_again_at_once() -> None:
    assert _pause(PACED_OWED - 1, outputs=1, cycle=1.0, wait=0.1) == 0.0


def test_a_poll_with_enough_outputs_or_none_is_not_followed_by_a_pause() -> None:
    assert _pause(10 * PACED_OWED, outputs=OUTPUTS_PER_POLL, cycle=1.0, wait=0.1) == 0.0
    assert _pause(10 * PACED_OWED, outputs=0, cycle=55.0, wait=55.0) == 0.0


def test_the_pause_lets_the_next_poll_carry_about_outputs_per_poll() -> None:
    # 20 outputs a second: 100 are due in 5 s, of which the poll itself takes 0.5 s.
    outputs, cycle, wait = 10, 0.5, 0.5
    pause = _pause(10 * PACED_OWED, outputs, cycle, wait)
    expected = min(PACE_SECONDS, OUTPUTS_PER_POLL * cycle / outputs - wait)
    assert pause == pytest.approx(expected)
    # Faster outputs: a shorter pause, then none.
    assert _pause(10 * PACED_OWED, 50, 0.5, 0.1) == pytest.approx(0.9)
    assert _pause(10 * PACED_OWED, 99, 0.5, 0.5) == pytest.approx(0.0, abs=0.01)


def test_the_pause_is_capped() -> None:
    assert _pause(10 * PACED_OWED, outputs=1, cycle=2.0, wait=0.1) == PACE_SECONDS
