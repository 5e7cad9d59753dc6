"""XOR, seen: the 2-3-2-1 sigmoid net's neurons and weights, its decision regions, and a GIF of
training (diagram and regions evolving as momentum SGD bends the plane).

Run: `python examples/visualize_xor.py [--out DIR]` (default `figures/xor`). Writes
`xor_network.png`, `xor_boundary.png` and `xor_training.gif` into DIR.
"""

import argparse
import pathlib

import numpy as np

import jdnn
from jdnn import viz
from jdnn.summarize import summary

OUT = "figures/xor"
STEPS = 600        # full-batch momentum-SGD steps (lr 0.5, momentum 0.9)
EVERY = 20         # steps between GIF frames: 31 frames
EXAMPLE = (1.0, 0.0)  # the input whose activations color the neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    out = pathlib.Path(args.out)

    # 1. Train, keeping a snapshot every EVERY steps, and write the GIF from the snapshots.
    result = viz.animate_training(out / "xor_training.gif", steps=args.steps, every=EVERY,
                                  example=EXAMPLE)
    model, train_state = result.model, result.train_state
    print(summary(model, (4, 2)))
    for frame in result.frames[:: max(1, len(result.frames) // 6)]:
        print(f"step {frame.step:4d}: loss {frame.loss:.4f}, accuracy {frame.accuracy:.0%}")

    # 2. The trained network: neurons colored by their activations for EXAMPLE.
    x = np.asarray(EXAMPLE, np.float32)
    viz.draw_network(model, train_state.params, train_state.state, x, path=out / "xor_network.png")
    for column, values in enumerate(viz.node_activations(model, train_state.params,
                                                         train_state.state, x)):
        print(f"  column {column}: {', '.join(f'{v:.3f}' for v in values)}")

    # 3. The decision regions on the four points.
    (points, labels), _ = jdnn.data.xor()
    viz.plot_decision_boundary(model, train_state.params, train_state.state, points, labels,
                               path=out / "xor_boundary.png")
    for name in ("xor_network.png", "xor_boundary.png", "xor_training.gif"):
        print(f"wrote {out / name} ({(out / name).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
