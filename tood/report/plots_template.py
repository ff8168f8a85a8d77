"""The HTML template that makes `dvc plots show` render offline: .dvc/plots_template.html.

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net (dvc_render.vega.VegaRenderer.SCRIPTS),
so on a machine without internet every loss curve in dvc_plots/index.html is blank (issue 18). DVC takes an
HTML template instead (`plots.html_template` in .dvc/config, relative to .dvc/); ours carries the same three
libraries, at the versions DVC asks for, inline, and leaves out DVC's `{scripts}` placeholder (the CDN tags).

The committed template was written by

    python -m tood.report.plots_template          # npm pack the three packages, rewrite .dvc/plots_template.html

which needs the npm registry once; `dvc plots show` never does. tests/test_dvc_plots.py checks that the
template's versions are the ones DVC's renderer names and that a curve renders in Chromium with the network off.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / ".dvc" / "plots_template.html"
# package -> its minified browser build inside the npm tarball
LIBRARIES = {
    "vega": "package/build/vega.min.js",
    "vega-lite": "package/build/vega-lite.min.js",
    "vega-embed": "package/build/vega-embed.min.js",
}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- {credits}: BSD-3-Clause, (c) the University of Washington Interactive Data Lab, https://vega.github.io.
         Inlined by tood/report/plots_template.py so that the page needs no network (DVC's own page loads
         them from a CDN). -->
{inline_scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def dvc_versions() -> dict[str, str]:
    """{package: version} of the CDN scripts the installed dvc_render asks for."""
    from dvc_render.vega import VegaRenderer

    found = re.findall(r"cdn\.jsdelivr\.net/npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS)
    return dict(found)


def build_page(scripts: dict[str, tuple[str, str]]) -> str:
    """The template with each {package: (version, minified js)} inlined, in DVC's loading order."""
    blocks = []
    for package, (version, js) in scripts.items():
        js = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", js)  # the map is not shipped
        if "</script" in js.lower():
            raise ValueError(f"{package} {version} contains '</script', which would end the inline block")
        blocks.append(f'    <script data-package="{package}@{version}">\n{js.rstrip()}\n    </script>')
    credits = ", ".join(f"{p} {v}" for p, (v, _) in scripts.items())
    return PAGE.replace("{credits}", credits).replace("{inline_scripts}", "\n".join(blocks))


def npm_pack(package: str, version: str, into: Path) -> str:
    """The package's minified build, fetched with `npm pack` from the npm registry."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}"],
        cwd=into,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (tarball,) = into.glob(f"{package}-{version}.tgz")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LIBRARIES[package])
        assert member is not None
        return member.read().decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEMPLATE, help="template to write")
    args = parser.parse_args(argv)
    versions = dvc_versions()
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {p: (versions[p], npm_pack(p, versions[p], Path(tmp))) for p in LIBRARIES}
    args.out.write_text(build_page(scripts), encoding="utf8")
    print(f"{args.out}: {', '.join(f'{p} {v}' for p, (v, _) in scripts.items())}")


if __name__ == "__main__":
    main()
