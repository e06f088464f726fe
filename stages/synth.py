"""DVC stage `synth`: write the synthetic AVE-format demo set to params `synth.root`.

Reads params.yaml `synth` (all keys). Output: <synth.root>/{Annotations.txt, trainSet.txt,
valSet.txt, testSet.txt, synth.json, AVE/<VideoID>.mp4}, replaced atomically.
"""
from __future__ import annotations

import time

from pipeline.cli import stage_main, stage_parser
from pipeline.config import load_params, to_dict
from pipeline.data.synth import generate


@stage_main
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__)
    args = p.parse_args(argv)
    cfg = load_params(args.params, sections=("synth",))["synth"]
    print(f"synth: {to_dict(cfg)}")
    t0 = time.time()
    root = generate(cfg)
    n = cfg.train + cfg.val + cfg.test
    print(f"synth: {n} videos ({cfg.train}/{cfg.val}/{cfg.test}), {cfg.num_classes} classes "
          f"-> {root} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
