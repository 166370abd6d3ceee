"""Who is asking for a download URL: a robot (a link preview, a scanner, a crawler) or a
prefetch, a person's browser, or a client that wants the bytes. Pure functions over a
request's headers; the download pipeline (``downloads``) decides what each one gets.

The one documented list of what counts as a robot or a prefetch is here:

- ``PREFETCH_HEADERS``: the request says itself that nobody asked for it yet. Chromium's
  speculation rules and ``<link rel=prefetch>`` send ``Sec-Purpose: prefetch`` (Fetch
  standard; ``prefetch;prerender`` for a prerender), older Chromium and Safari
  ``Purpose: prefetch``, Safari's Top Sites previews ``X-Purpose: preview``, Firefox's
  link prefetching ``X-Moz: prefetch``.
- ``PREVIEW_AGENTS``: user agents of link previews (chat apps, social networks, mail),
  link scanners and search engine crawlers, as their operators document them. A match
  is a word inside the User-Agent, case-insensitive: ``Slackbot-LinkExpanding 1.0
  (+https://api.slack.com/robots)`` matches ``Slackbot-LinkExpanding``.

No list catches everything: Microsoft's Safe Links fetches with a browser's user agent
or none, runs JavaScript and even submits forms (README: a password is the defence).
A false match costs little: a robot gets the landing page, whose Download button still
works for a person.
"""

from __future__ import annotations

import re

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

# (word in the User-Agent, whose) — the word as a regular expression.
PREVIEW_AGENTS: tuple[tuple[str, str], ...] = (
    # Chat and mail link previews.
    (r"Slackbot-LinkExpanding", "Slack link unfurling"),
    (r"Slack-ImgProxy", "Slack image proxy"),
    (r"Slackbot", "Slack's other fetchers"),
    (r"facebookexternalhit", "Facebook, Messenger, Instagram, iMessage and LINE previews"),
    (r"Facebot", "Facebook"),
    (r"meta-externalagent", "Meta's crawler"),
    (r"meta-externalfetcher", "Meta's fetches for its users"),
    (r"WhatsApp", "WhatsApp previews (Signal's previews say WhatsApp too)"),
    (r"TelegramBot", "Telegram previews"),
    (r"Discordbot", "Discord embeds"),
    (r"Twitterbot", "X (Twitter) cards, also iMessage"),
    (r"LinkedInBot", "LinkedIn previews"),
    (r"SkypeUriPreview", "Skype and Microsoft Teams previews"),
    (r"MicrosoftPreview", "Microsoft Teams and Outlook previews"),
    (r"Teams", "Microsoft Teams"),
    (r"BingPreview", "Bing and Outlook previews"),
    (r"Viber", "Viber previews"),
    (r"kakaotalk-scrap", "KakaoTalk previews"),
    (r"Snapchat", "Snapchat previews"),
    (r"vkShare", "VK previews"),
    (r"Pinterest(?:bot)?", "Pinterest"),
    (r"redditbot", "Reddit previews"),
    (r"Tumblr", "Tumblr previews"),
    (r"Mastodon", "Mastodon link previews"),
    (r"Pleroma|Akkoma|Misskey", "other fediverse servers' previews"),
    (r"Cardyb", "Bluesky link cards"),
    (r"Synapse \(bot", "Matrix (Synapse) URL previews"),
    (r"ZulipURLPreview", "Zulip previews"),
    (r"Mattermost-Bot", "Mattermost previews"),
    (r"Rocket\.Chat", "Rocket.Chat previews"),
    (r"Discourse Forum Onebox", "Discourse oneboxes"),
    (r"Iframely", "Iframely embeds"),
    (r"Embedly", "Embedly embeds"),
    # Search engines and their previews.
    (r"Googlebot|GoogleOther|Google-InspectionTool|Google-PageRenderer|AdsBot-Google|APIs-Google",
     "Google's crawlers and previews"),
    (r"bingbot|adidxbot", "Bing's crawlers"),
    (r"Applebot", "Apple's crawler (Siri, Spotlight)"),
    (r"DuckDuckBot", "DuckDuckGo"),
    (r"YandexBot", "Yandex"),
    (r"Baiduspider", "Baidu"),
    (r"Slurp", "Yahoo"),
)

PREFETCH_HEADERS: tuple[str, ...] = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")
# The first token of a list member (``prefetch;prerender`` → ``prefetch``).
PREFETCH_VALUES = frozenset({"prefetch", "preview", "prerender"})

_AGENTS = re.compile(r"(?<![\w-])(?:" + "|".join(f"(?:{word})" for word, _ in PREVIEW_AGENTS) + r")(?![\w])",
                     re.IGNORECASE)
_TOKEN = re.compile(r"[ \t]*([A-Za-z-]+)")


def is_preview_agent(user_agent: str | None) -> bool:
    """Whether the User-Agent names a link preview, scanner or crawler of the list."""
    return bool(user_agent) and _AGENTS.search(user_agent) is not None


def announces_prefetch(headers) -> bool:
    """Whether the request says it is a prefetch or a preview (``PREFETCH_HEADERS``)."""
    for name in PREFETCH_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        for member in value.split(","):
            match = _TOKEN.match(member)
            if match and match.group(1).lower() in PREFETCH_VALUES:
                return True
    return False


def is_robot(headers) -> bool:
    """A prefetch, or a user agent of the list: nobody asked for the bytes yet."""
    return announces_prefetch(headers) or is_preview_agent(headers.get("User-Agent"))


def prefers_html(headers) -> bool:
    """Whether the client asks for a page rather than the file: ``text/html`` ranks above
    any other type in its Accept (a browser's navigation does), and it asks for no Range
    (a browser resuming a download wants bytes). ``*/*`` (curl, wget, python-requests),
    no Accept at all, or HTML only as good as anything else: the bytes."""
    if headers.get("Range") is not None:
        return False
    accept = parse_accept_header(headers.get("Accept"), MIMEAccept)
    html = accept.quality("text/html")
    # What a download would be matched under when the client asks for anything else.
    other = accept.quality("application/octet-stream")
    return html > other
