"""Regenerate the bundled instance images: `python fluxlora/assets/make_images.py`.

The built-in demo needs a DreamBooth subject without any download, so the project draws its own:
one small toy robot, seen on four backgrounds at four positions and sizes. Drawn with PIL from
fixed numbers, so the images are the project's own work (no third-party license) and reproducible.
"""

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
VIEWS = [  # (background top, background bottom, centre x, centre y, scale)
    ((235, 225, 200), (180, 160, 120), 128, 136, 1.00),
    ((170, 200, 235), (60, 90, 150), 110, 140, 0.85),
    ((210, 235, 200), (90, 140, 80), 150, 130, 0.90),
    ((240, 215, 230), (150, 100, 140), 128, 150, 0.75),
]


def gradient(top, bottom) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        draw.line([(0, y), (SIZE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return image


def draw_robot(draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float) -> None:
    def box(x0, y0, x1, y1):
        return [cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s]

    body, head = (200, 40, 40), (225, 225, 230)
    draw.rounded_rectangle(box(-45, -10, 45, 75), radius=int(14 * s), fill=body, outline=(60, 10, 10), width=3)
    draw.rounded_rectangle(box(-35, -80, 35, -15), radius=int(12 * s), fill=head, outline=(60, 60, 70), width=3)
    for ex in (-15, 15):
        draw.ellipse(box(ex - 8, -58, ex + 8, -42), fill=(30, 150, 230), outline=(10, 40, 80), width=2)
    draw.line(box(0, -80, 0, -100)[:4], fill=(60, 60, 70), width=3)
    draw.ellipse(box(-6, -108, 6, -96), fill=(250, 200, 30))
    for ax in (-1, 1):
        arm = box(min(ax * 45, ax * 65), 0, max(ax * 45, ax * 65), 50)
        draw.rounded_rectangle(arm, radius=int(6 * s), fill=head)
    draw.rectangle(box(-20, 15, 20, 45), fill=(250, 200, 30), outline=(90, 70, 10), width=2)


def main() -> None:
    out = Path(__file__).with_name("instance")
    out.mkdir(exist_ok=True)
    for index, (top, bottom, cx, cy, scale) in enumerate(VIEWS):
        image = gradient(top, bottom)
        draw_robot(ImageDraw.Draw(image), cx, cy, scale)
        image.save(out / f"robot_{index}.png", optimize=True)


if __name__ == "__main__":
    main()
