"""What the sample keeps between runs, how big it is, and `--clear_cache`.

Two places: the cache folder (`--cache_dir`, else `$UNET_SAMPLE_CACHE`, `$XDG_CACHE_HOME/unet-sample`,
`~/.cache/unet-sample`), which holds the compiled engines with inductor's own cache (`engines/`), auto's choices and
the machine's build times (`engines/auto/`) and the generated data sets (`synthetic-*`); and the precompiled C++
headers inductor writes under `<temp dir>/torchinductor_<user>`, whatever its cache folder (about 280 MB after one
CPU compile).

The cache folder may be one the user chose, `--cache_dir .` in a project with its own `engines/` package: a name proves
nothing. So `--clear_cache` removes only the folders the sample provably made, those holding its CACHEDIR.TAG
(utils/builds.py: `engines/` when a run created it, each generated set from its first file, a `.synthetic-*` build a
killed run left); a look-alike without it is kept and named, with what to do. Inductor's headers folder, in the temp
dir under a name only inductor uses, is removed as it is.
"""
from __future__ import annotations

import getpass
import glob
import os
import shutil
import tempfile

from utils.builds import TAG, builder_gone, tagged
from utils.files import default_cache_dir

MB = 1 << 20


def inductor_headers() -> str | None:
    """The folder of inductor's precompiled headers (None where no user name can be found)."""
    try:
        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}", "precompiled_headers")
    except (KeyError, OSError):
        return None


def candidates(cache_dir: str | None) -> list[str]:
    """The paths in the cache folder that the sample may have written: kept between runs (`engines`, `synthetic-*`)
    or left by a run killed while it generated a set (`.synthetic-*`); present or not, the sample's or not."""
    root = cache_dir or default_cache_dir()
    escaped = glob.escape(root)
    return [os.path.join(root, "engines")] + sorted(glob.glob(os.path.join(escaped, "synthetic-*"))) + \
        sorted(glob.glob(os.path.join(escaped, ".synthetic-*")))


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


def clear(cache_dir: str | None) -> tuple[list[tuple[str, int, str | None]], list[str]]:
    """Remove what the sample keeps: ([(path, bytes freed, why it could not all be removed or None)], [one line for
    each folder that looks like the sample's but is kept: why, and what to do])."""
    done, kept = [], []
    for path in candidates(cache_dir):
        if not os.path.lexists(path):
            continue
        why = _kept_because(path)
        if why:
            kept.append(f"kept {path}: {why}")
        else:
            done.append(_remove(path, TAG))
    headers = inductor_headers()
    if headers and os.path.lexists(headers):
        done.append(_remove(headers, None))
    return done, kept


def _kept_because(path: str) -> str | None:
    """Why `path` is not removed (None: it is the sample's, and nobody is building it)."""
    if not tagged(path):
        return f"not marked as the sample's cache (no {TAG} written by unet-sample); remove it by hand if an older " \
               "version of the sample wrote it"
    if os.path.basename(path).startswith(".") and not builder_gone(path):
        return "a run is generating this data set now; clear the cache again once it has ended"
    return None


def _remove(path: str, tag: str | None) -> tuple[str, int, str | None]:
    """Delete `path`, its `tag` file last: a removal that fails half way leaves a folder still marked as the
    sample's, which the next --clear_cache removes. (path, bytes freed, why not all or None)."""
    freed = size(path)
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            for name in sorted(os.listdir(path), key=lambda n: n == tag):
                child = os.path.join(path, name)
                if os.path.isdir(child) and not os.path.islink(child):
                    shutil.rmtree(child)
                else:
                    os.remove(child)
            os.rmdir(path)
        else:
            os.remove(path)
    except OSError as exc:
        return path, freed - (size(path) if os.path.exists(path) else 0), exc.strerror or str(exc)
    return path, freed, None
