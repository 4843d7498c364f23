"""What the sample keeps between runs, how big it is, and `--clear_cache`.

Two places: the cache folder (`--cache_dir`, else `$UNET_SAMPLE_CACHE`, `$XDG_CACHE_HOME/unet-sample`,
`~/.cache/unet-sample`), which holds the compiled engines with inductor's own cache (`engines/`), auto's choices and
the machine's build times (`engines/auto/`) and the generated data sets (`synthetic-*`); and the precompiled C++
headers inductor writes under `<temp dir>/torchinductor_<user>`, whatever its cache folder (about 280 MB after one
CPU compile). Only those entries are cleared: a --cache_dir that holds other files keeps them.
"""
from __future__ import annotations

import getpass
import glob
import os
import shutil
import tempfile

from utils.files import default_cache_dir

MB = 1 << 20


def inductor_headers() -> str | None:
    """The folder of inductor's precompiled headers (None where no user name can be found)."""
    try:
        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}", "precompiled_headers")
    except (KeyError, OSError):
        return None


def entries(cache_dir: str | None) -> list[str]:
    """The paths the sample writes between runs (present or not)."""
    root = cache_dir or default_cache_dir()
    paths = [os.path.join(root, "engines")] + sorted(glob.glob(os.path.join(glob.escape(root), "synthetic-*")))
    headers = inductor_headers()
    return paths + ([headers] if headers else [])


def size(path: str) -> int:
    """Bytes of the files under `path` (links not followed; what cannot be read counts 0)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def sizes(cache_dir: str | None) -> dict[str, int]:
    """{place: bytes}: the cache folder as a whole and inductor's headers."""
    root = cache_dir or default_cache_dir()
    places = {root: size(root) if os.path.isdir(root) else 0}
    headers = inductor_headers()
    if headers:
        places[headers] = size(headers) if os.path.isdir(headers) else 0
    return places


def growth_line(before: dict[str, int], after: dict[str, int]) -> str | None:
    """The report's last line when a place grew in this run: what each holds now and by how much it grew."""
    grew = [(place, after[place], after[place] - before.get(place, 0)) for place in after
            if after[place] - before.get(place, 0) >= MB]
    if not grew:
        return None
    said = ", ".join(f"{shown_home(place)} {now / MB:,.0f} MB (+{more / MB:,.0f} MB)" for place, now, more in grew)
    return f"cache: {said}; python sample.py --clear_cache empties it (README: Where files are kept)"


def shown_home(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home != "~" and (path == home or path.startswith(home + os.sep)) else path


def clear(cache_dir: str | None) -> list[tuple[str, int, str | None]]:
    """Remove every entry the sample keeps: [(path, bytes freed, why it could not be removed or None)]."""
    done = []
    for path in entries(cache_dir):
        if not os.path.lexists(path):
            continue
        freed = size(path)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            done.append((path, freed, None))
        except OSError as exc:
            done.append((path, freed - (size(path) if os.path.exists(path) else 0), exc.strerror or str(exc)))
    return done
