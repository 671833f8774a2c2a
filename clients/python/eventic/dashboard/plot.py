"""The throughput plot, drawn on the server as inline SVG (no JavaScript chart library)."""

from datetime import datetime, timedelta
from html import escape

W, H, LEFT, BOTTOM, TOP = 720, 180, 48, 22, 10


def throughput_svg(rows: list[dict], now: datetime) -> tuple[str, int]:
    """Jobs finished per second, one bar per minute of the last hour (rows: minute, jobs); and
    how many jobs finished in that hour."""
    end = now.replace(second=0, microsecond=0)
    minutes = [end - timedelta(minutes=59 - i) for i in range(60)]
    by_minute = {r["minute"]: r["jobs"] for r in rows}
    rates = [by_minute.get(m, 0) / 60 for m in minutes]
    top = max(rates) or 1.0
    plot_w, plot_h = W - LEFT - 8, H - BOTTOM - TOP
    bar = plot_w / 60
    parts = [f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="jobs finished per second, last hour" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0, 0.5, 1):
        y = TOP + plot_h * (1 - frac)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - 8}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(top * frac)}</text>')
    for i, (minute, rate) in enumerate(zip(minutes, rates)):
        h = plot_h * rate / top
        x = LEFT + i * bar
        label = escape(f"{minute:%H:%M} UTC: {rate:.2f} jobs/s ({by_minute.get(minute, 0)} jobs)")
        parts.append(f'<rect x="{x + 0.5:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                     f'height="{h:.1f}" class="bar"><title>{label}</title></rect>')
    for i in (0, 15, 30, 45, 59):
        x = LEFT + i * bar + bar / 2
        parts.append(f'<text x="{x:.1f}" y="{H - 6}" text-anchor="middle">{minutes[i]:%H:%M}</text>')
    parts.append("</svg>")
    return "".join(parts), sum(by_minute.get(m, 0) for m in minutes)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"
