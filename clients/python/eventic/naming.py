"""The extension's naming rule for a class's queue and view (src/classes/naming.rs)."""


def snake_case(name: str) -> str:
    """`Story` → `story`, `StoryDraft` → `story_draft`, `HTTPServer` → `http_server`,
    `public.orders` → `public_orders`."""
    out = []
    for i, c in enumerate(name):
        if c == ".":
            out.append("_")
            continue
        if c.isascii() and c.isupper() and i > 0:
            prev = name[i - 1]
            next_is_lower = i + 1 < len(name) and name[i + 1].isascii() and name[i + 1].islower()
            if (prev.isascii() and (prev.islower() or prev.isdigit())) or (
                    prev.isascii() and prev.isupper() and next_is_lower):
                out.append("_")
        out.append(c.lower() if c.isascii() else c)
    return "".join(out)
