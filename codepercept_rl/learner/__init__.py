"""The FSDP2 learner shared by SFT and GRPO: see :mod:`.learner` (API), :mod:`.fsdp`, :mod:`.optim`,
:mod:`.checkpoint`, :mod:`.dist` and :mod:`.actor` (Ray)."""

from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.learner.learner import Learner, LearnerConfig, LossFn, load_policy, sft_loss

__all__ = ["Learner", "LearnerConfig", "LossFn", "MicroBatch", "load_policy", "sft_loss"]
