"""One rank of the two-process DDP test (tests/tasks/training/test_train.py): train, then write a hash of
every network's parameters, the step and the losses to <out>/rank<R>.json."""
import hashlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from tasks.core.config import find_repo_root, load_params
from tasks.training.train import train


def main() -> None:
    params_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = []
    result = train(load_params(params_path), find_repo_root(params_path), steps.append)
    rank = dist.get_rank()
    hashes = {name: hashlib.sha256(b"".join(sd[k].detach().cpu().numpy().tobytes() for k in sorted(sd))).hexdigest()
              for name, sd in ((n, net.state_dict()) for n, net in result.nets.items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": int(os.environ["WORLD_SIZE"]), "run_id": result.run_id, "step": result.step,
        "params": hashes, "losses": [h["g/total"] for h in steps]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
