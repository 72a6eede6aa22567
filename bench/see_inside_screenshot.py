"""The picture of run.py's --html page that README shows: one token of the shipped model's continuation
clicked, its alternatives, where it looked and its merges beside the text. Run by hand after a reship.

    python bench/see_inside_screenshot.py [--out docs/see-inside-page.png] [--token N] [--layer L] [--head H]

It runs `python run.py --prompt "ROMEO:" --seed 1 --max-new-tokens 80 --html PAGE` on the shipped model
(Saved_Weights/pretrained.pth, tokenizer_save/) into a temporary folder, opens PAGE in headless
Chromium (tests/browser.py: Debian's chromium driven by playwright), clicks token N (default: the
drawn token in the middle of the continuation), picks layer L and head H (default: the last layer,
all heads), and saves the window as a PNG of at most 256 colours (tens of KB).
"""
import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser import chromium, open_page          # noqa: E402  (tests/browser.py)
from support.files import atomic_write           # noqa: E402

COMMAND = ["--prompt", "ROMEO:", "--seed", "1", "--max-new-tokens", "80"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "see-inside-page.png")
    p.add_argument("--token", type=int, help="the token to click (default: the middle drawn one)")
    p.add_argument("--layer", type=int, help="the layer whose attention is drawn (default: the last)")
    p.add_argument("--head", type=int, help="the head (default: the mean over all heads)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        page_path = Path(folder) / "page.html"
        subprocess.run([sys.executable, str(REPO / "run.py"), "--weights", str(REPO / "Saved_Weights" / "pretrained.pth"),
                        "--tokenizer-dir", str(REPO / "tokenizer_save"), *COMMAND, "--html", str(page_path)],
                       check=True, stdout=subprocess.DEVNULL)
        with chromium(width=1100, height=620) as context:
            page, requests, errors = open_page(context, page_path)
            kinds = page.eval_on_selector_all("#text .tok", "spans => spans.map(s => s.classList[1])")
            drawn = [i for i, kind in enumerate(kinds) if kind == "drawn"]
            page.locator("#text .tok").nth(drawn[len(drawn) // 2] if args.token is None else args.token).click()
            layers = page.locator("#layer option").count()
            page.select_option("#layer", str(layers - 1 if args.layer is None else args.layer))
            if args.head is not None:
                page.select_option("#map", str(args.head))
            png = page.screenshot()
    from PIL import Image                        # comes with matplotlib
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    atomic_write(args.out, lambda tmp: image.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB); the page asked for {requests}, "
          f"errors: {errors or 'none'}", file=sys.stderr)


if __name__ == "__main__":
    main()
