"""The report (views/report.Report) drawn as a PDF with matplotlib's PdfPages: A4 pages of wrapped text, the
summary table in a monospaced font, one page per film with its image and overlay side by side.

matplotlib rather than reportlab: it is already installed with the app's plotting stack, it writes real text
(TrueType fonts, so pdftotext and screen readers read every word) and the images at the size given. Every text
is drawn with parse_math=False: a file name with '$' in it is shown, never typeset.
"""

from __future__ import annotations

import io
import textwrap

from cxrdemo.data.shrink import display_copy
from cxrdemo.views.report import FilmPage, Report

A4 = (8.27, 11.69)  # inches
LEFT, RIGHT, TOP, BOTTOM = 0.07, 0.93, 0.95, 0.06  # text area, figure fractions
BODY_PT, SMALL_PT, TABLE_PT = 9, 8, 7
MONO_WIDTH = 0.6  # DejaVu Sans Mono's advance, in em
WRAP_BODY = 100  # characters per line of 9 pt DejaVu Sans across the text area
IMAGE_SIDE = 512  # px: the pictures' long side in the PDF (the screen shows at most 1024)
# Summary table columns: share of the table width (monospaced characters are exact)
COLUMN_CHARS = {"File": 30, "Verdict": 10, "Set": 12, "Chest film?": 7, "Like the training films?": 9,
                "In the population?": 11, "Needs a look": 22, "Your mark": 34}


class Flow:
    """Lines of text placed down A4 pages, a new page when one is full; each page gets the footer."""

    def __init__(self, pdf, footer: str, title: str) -> None:
        self.pdf, self.footer, self.title = pdf, footer, title
        self.fig, self.y, self.pages = None, TOP, 0

    def new_page(self) -> None:
        """Close the current page (if any) and start the next."""
        from matplotlib.figure import Figure  # not pyplot: no global state shared by the app's sessions

        self.close_page()
        self.fig = Figure(figsize=A4)
        self.pages += 1
        self.fig.text(0.5, 0.025, f"{self.footer} · {self.title} · page {self.pages}", ha="center",
                      fontsize=SMALL_PT - 1, color="#444444", parse_math=False)
        self.fig.text(0.5, 0.975, self.footer, ha="center", fontsize=SMALL_PT, weight="bold", color="#a00000",
                      parse_math=False)
        self.y = TOP

    def close_page(self) -> None:
        """Write the current page to the PDF."""
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

    def line_height(self, pt: float) -> float:
        return pt * 1.4 / (A4[1] * 72)

    def lines(self, lines: list[str], pt: float = BODY_PT, x: float = LEFT, keep: int = 0, **style) -> None:
        """Place `lines` one under the other, breaking the page where needed (`keep`: lines of room wanted below
        the first, so that a heading is not left alone at the foot of a page)."""
        h = self.line_height(pt)
        if self.fig is not None and self.y - h * (1 + keep) < BOTTOM:
            self.new_page()
        for line in lines:
            if self.fig is None or self.y - h < BOTTOM:
                self.new_page()
            self.y -= h
            self.fig.text(x, self.y, line, fontsize=pt, va="bottom", parse_math=False, **style)

    def paragraph(self, text: str, pt: float = BODY_PT, width: int = WRAP_BODY, **style) -> None:
        """Wrapped text."""
        self.lines(textwrap.wrap(text, width, break_long_words=True) or [""], pt, **style)

    def section(self, heading: str, text: str) -> None:
        """A bold heading, its text, a little space."""
        self.lines([heading], BODY_PT, keep=2, weight="bold")
        self.paragraph(text)
        self.y -= self.line_height(BODY_PT) * 0.4

    def gap(self, pt: float = BODY_PT) -> None:
        self.y -= self.line_height(pt)


def _table(flow: Flow, rows: list[list[str]]) -> None:
    """The summary table in a monospaced font: each cell wrapped to its column, rows as tall as their tallest cell."""
    header = rows[0]
    widths = [COLUMN_CHARS.get(h.split(" (")[0], 12) for h in header]
    total = sum(widths) + len(widths) - 1
    pt = min(TABLE_PT, (RIGHT - LEFT) * A4[0] * 72 / (total * MONO_WIDTH))  # the widest table still fits
    char = MONO_WIDTH * pt / (A4[0] * 72)  # one monospaced character, in figure width

    def draw(row: list[str], **style) -> None:
        cells = [textwrap.wrap(str(v), w, break_long_words=True) or [""] for v, w in zip(row, widths)]
        height = max(len(c) for c in cells)
        h = flow.line_height(pt)
        if flow.fig is None or flow.y - h * height < BOTTOM:
            flow.new_page()
        x = LEFT
        for c, w in zip(cells, widths):
            for k, part in enumerate(c):
                flow.fig.text(x, flow.y - h * (k + 1), part, fontsize=pt, family="DejaVu Sans Mono",
                              va="bottom", parse_math=False, **style)
            x += (w + 1) * char
        flow.y -= h * height + h * 0.3

    draw(header, weight="bold")
    for row in rows[1:]:
        draw(row)


def _film_page(flow: Flow, page: FilmPage, i: int, n: int) -> None:
    """One film: its name, image and overlay side by side (with the user's box), then its sections."""
    from matplotlib.patches import Rectangle

    flow.new_page()
    flow.lines([page.title], 12, weight="bold")
    flow.lines([f"Film {i} of {n}"], SMALL_PT, color="#444444")
    grey = display_copy(page.image, IMAGE_SIDE)
    over = display_copy(page.overlay, IMAGE_SIDE)
    top = flow.y - 0.01
    for k, (pic, kw) in enumerate(((grey, {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}), (over, {}))):
        ax = flow.fig.add_axes([LEFT + k * 0.445, top - 0.36, 0.415, 0.36])
        ax.imshow(pic, interpolation="none", **kw)
        ax.set_axis_off()
        if page.box is not None:
            h, w = pic.shape[:2]
            x0, y0, x1, y1 = page.box.corners
            ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, edgecolor="#00e000",
                                   linewidth=1.5))
    flow.y = top - 0.365
    flow.paragraph(f"Left: the image as read. Right: {page.overlay_caption}.", SMALL_PT, width=112,
                   color="#444444")
    flow.gap(SMALL_PT)
    for heading, text in page.sections:
        flow.section(heading, text)


def write(report: Report) -> bytes:
    """The report as PDF bytes."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans"}), \
            PdfPages(buf, metadata={"Title": report.title, "Creator": "cxrdemo", "Subject": report.footer}) as pdf:
        flow = Flow(pdf, report.footer, "cxrdemo report")
        flow.new_page()
        flow.lines([report.title], 14, weight="bold")
        flow.gap()
        for heading, text in report.front:
            flow.section(heading, text)
        flow.lines(["Summary"], 11, keep=3, weight="bold")
        _table(flow, report.summary)
        if report.unread:
            flow.gap()
            flow.lines(["Files not read"], 11, keep=3, weight="bold")
            for name, why in report.unread:
                flow.section(name, why)
        for i, page in enumerate(report.pages, 1):
            _film_page(flow, page, i, len(report.pages))
        flow.close_page()
    return buf.getvalue()
