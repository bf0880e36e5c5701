"""The training loop's state and safety rails, step by step (no training: tests/test_train.py
runs them inside the Trainer)."""

import json
import math

from llama_jax.loop_state import LoopState, Rollback, SafetyRails

RAILS = SafetyRails(max_consecutive_skips=3, spike_factor=2.0, spike_window=4,
                    spike_min_history=3)


def _steps(rails, loop, steps):
  """Runs the rails over (loss, skipped) steps, one batch each; the decisions, None for none."""
  decisions = []
  for loss, skipped in steps:
    loop.batches_drawn += 1
    decisions.append(rails.check(loop, loss, skipped))
  return decisions


NONFINITE = (math.nan, True)


def test_skips_are_counted_and_a_finite_step_ends_the_run_of_them():
  loop = LoopState()
  assert _steps(RAILS, loop, [(1.0, False), NONFINITE, NONFINITE]) == [None, None, None]
  assert loop.skipped_updates == 2 and loop.nonfinite_batches == [2, 3]
  assert loop.recent_losses == [1.0]  # a skipped step's loss is not recorded
  assert _steps(RAILS, loop, [(1.1, False), NONFINITE, NONFINITE]) == [None, None, None]
  assert loop.skipped_updates == 4 and loop.nonfinite_batches == [5, 6]
  assert loop.recent_losses == [1.0, 1.1]


def test_max_consecutive_skips_in_a_row_roll_back_naming_those_batches():
  loop = LoopState(batches_drawn=7)
  decisions = _steps(RAILS, loop, [NONFINITE] * 3)
  assert decisions == [None, None, Rollback("3 non-finite steps in a row", [8, 9, 10])]
  assert loop.skipped_updates == 3


def test_spikes_are_looked_for_only_after_spike_min_history_losses():
  loop = LoopState()
  # The third loss is 5 x the mean of the two before it: too few to judge by, so recorded.
  assert _steps(RAILS, loop, [(1.0, False), (1.0, False), (5.0, False)]) == [None] * 3
  # Three seen: 4.7 is over 2 x their mean (7 / 3), 4.6 under.
  assert _steps(RAILS, loop, [(4.7, False), (4.6, False)]) == [
      Rollback("loss 4.7000 > 2.0 x recent mean 2.3333", [4]), None]
  assert loop.recent_losses == [1.0, 1.0, 5.0, 4.6]  # the spike is not recorded


def test_the_spike_mean_is_over_the_last_spike_window_losses():
  loop = LoopState()
  assert _steps(RAILS, loop, [(10.0, False)] * 3 + [(1.0, False)] * 4) == [None] * 7
  assert loop.recent_losses == [1.0] * 4  # the window: the three 10s are gone
  # 2.5 is under 2 x the mean of all seven losses (4.86), over 2 x that of the last four.
  assert _steps(RAILS, loop, [(2.5, False)]) == [Rollback(
      "loss 2.5000 > 2.0 x recent mean 1.0000", [8])]


def test_a_rollback_goes_on_from_the_checkpoint_and_skips_the_earlier_batches_too():
  current = LoopState(batches_drawn=12, skip_batches=[4, 9], recent_losses=[3.0],
                      skipped_updates=5, rollbacks=1, failed_saves=2, nonfinite_batches=[10, 11])
  # Saved before the first rollback, which went back to it too: the count is the current one's.
  checkpointed = LoopState(batches_drawn=6, skip_batches=[4], recent_losses=[2.0, 2.5],
                           skipped_updates=1, energy={"device_seconds": 1.0,
                                                      "device_joules": 400.0})
  assert current.rolled_back_to(checkpointed, [9, 7]) == LoopState(
      batches_drawn=6, skip_batches=[4, 7, 9], recent_losses=[2.0, 2.5], skipped_updates=1,
      rollbacks=2, energy={"device_seconds": 1.0, "device_joules": 400.0})


def test_rails_come_from_the_train_config(load_config):
  train = load_config("tiny").train
  assert SafetyRails.from_config(train) == SafetyRails(
      train.max_consecutive_skips, train.spike_factor, train.spike_window, train.spike_min_history)


def test_loop_state_json_round_trip_shares_nothing():
  loop = LoopState(batches_drawn=9, skip_batches=[3, 4], recent_losses=[2.5, 2.25],
                   skipped_updates=2, rollbacks=1, failed_saves=1, nonfinite_batches=[9],
                   energy={"device_seconds": 12.5, "device_joules": 5000.0})
  saved = loop.to_json()
  assert LoopState.from_json(json.loads(json.dumps(saved))) == loop
  # An asynchronous save serialises `saved` later, while the loop goes on.
  loop.skip_batches.append(7)
  loop.nonfinite_batches.append(10)
  loop.energy["device_seconds"] = 13.0
  assert saved["skip_batches"] == [3, 4] and saved["nonfinite_batches"] == [9]
  assert saved["energy"]["device_seconds"] == 12.5


def test_a_checkpoint_of_the_dict_era_is_read():
  # The progress item as the trainer wrote it before LoopState (a checkpoint of step 3):
  # failed_saves and nonfinite_batches only once not zero or empty.
  saved = json.loads(
      '{"batches_drawn": 3, "skip_batches": [], "recent_losses": [6.241664886474609, '
      '6.238515853881836, 6.251273155212402], "skipped_updates": 0, "rollbacks": 0, "energy": '
      '{"device_seconds": 5.41634463399987, "device_joules": 2166.537853599948}}')
  loop = LoopState.from_json(saved)
  assert loop == LoopState(
      batches_drawn=3, recent_losses=[6.241664886474609, 6.238515853881836, 6.251273155212402],
      energy={"device_seconds": 5.41634463399987, "device_joules": 2166.537853599948})
  assert loop.to_json() == {**saved, "failed_saves": 0, "nonfinite_batches": []}
  with_skips = LoopState.from_json({**saved, "failed_saves": 2, "nonfinite_batches": [3]})
  assert (with_skips.failed_saves, with_skips.nonfinite_batches) == (2, [3])
