"""previews.py: who asks for a download URL, from the headers alone."""

from __future__ import annotations

import re

import pytest
from werkzeug.datastructures import Headers

from vimeo_api import previews

# User agents as their operators document them (or as they are seen), one per entry of
# the list at least; tests/test_links.py sends each of them to a real deployment.
PREVIEW_USER_AGENTS = [
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Slack-ImgProxy (+https://api.slack.com/robots)",
    "Slackbot 1.0 (+https://api.slack.com/robots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Facebot",
    "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
    "meta-externalfetcher/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
    "WhatsApp/2.23.20.0 A",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "Twitterbot/1.0",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/95.0.4638.69 Safari/537.36 MicrosoftPreview/2.0 +https://aka.ms/MicrosoftPreview",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Teams/24124.2311.2911.3900 Chrome/120.0.0.0 Electron/28.2.2 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) BingPreview/1.0b",
    "Viber/13.3.0.5 CFNetwork/1240.0.4 Darwin/20.6.0",
    "facebookexternalhit/1.1; kakaotalk-scrap/1.0; +https://devtalk.kakao.com/t/scrap/33984",
    "Snapchat/10.77.5.59 (like Safari/604.1)",
    "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
    "Pinterestbot/1.0 (+http://www.pinterest.com/bot.html)",
    "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
    "Tumblr/14.0.835.186",
    "http.rb/5.1.1 (Mastodon/4.2.0; +https://mastodon.social/)",
    "Pleroma 2.5.0; https://pleroma.example <admin@pleroma.example>",
    "Bluesky Cardyb/1.1",
    "Synapse (bot; +https://github.com/matrix-org/synapse)",
    "ZulipURLPreview/5.0",
    "Mattermost-Bot/1.1",
    "Rocket.Chat/6.4.0",
    "Discourse Forum Onebox v3.2.0",
    "Iframely/1.3.1 (+https://iframely.com/docs/about)",
    "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; Google-InspectionTool/1.0)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
]

PREFETCHES = [
    {"Sec-Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"Purpose": "prefetch"},
    {"X-Purpose": "preview"},
    {"X-Moz": "prefetch"},
]

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/156.0.0.0 Safari/537.36")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PEOPLE_AND_TOOLS = [CHROME, FIREFOX, "curl/8.14.1", "Wget/1.21.3", "python-requests/2.32.5",
                    "Python-urllib/3.11", "aria2/1.36.0", "", None]
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize("agent", PREVIEW_USER_AGENTS)
def test_each_documented_preview_agent_is_a_robot(agent):
    assert previews.is_preview_agent(agent)
    assert previews.is_robot(Headers({"User-Agent": agent}))


def test_every_entry_of_the_list_is_exercised_by_an_agent_above():
    for word, _whose in previews.PREVIEW_AGENTS:
        entry = re.compile(rf"(?<![\w-])(?:{word})(?![\w])", re.IGNORECASE)
        assert any(entry.search(agent) for agent in PREVIEW_USER_AGENTS), word


@pytest.mark.parametrize("headers", PREFETCHES, ids=lambda h: "|".join(f"{k}: {v}" for k, v in h.items()))
def test_each_prefetch_header_is_a_robot(headers):
    assert previews.announces_prefetch(Headers(headers))
    assert previews.is_robot(Headers({"User-Agent": CHROME, **headers}))


@pytest.mark.parametrize("agent", PEOPLE_AND_TOOLS)
def test_browsers_and_download_tools_are_not_robots(agent):
    headers = Headers({"User-Agent": agent} if agent is not None else {})
    assert not previews.is_robot(headers)


@pytest.mark.parametrize("value", ["", "navigate", "no-prefetch", "prefetched"])
def test_other_purposes_are_not_prefetches(value):
    assert not previews.announces_prefetch(Headers({"Sec-Purpose": value, "Purpose": value}))


@pytest.mark.parametrize("accept, html", [
    (BROWSER_ACCEPT, True),  # Chromium and Firefox navigating
    ("text/html", True),
    ("text/html;q=0.9, application/octet-stream;q=0.5", True),
    ("*/*", False),  # curl, wget, python-requests
    (None, False),  # no Accept at all
    ("text/html, */*", False),  # HTML as good as anything: the bytes
    ("application/json", False),
    ("application/octet-stream, text/html;q=0.5", False),
])
def test_prefers_html_when_html_ranks_above_anything_else(accept, html):
    headers = Headers({"Accept": accept} if accept is not None else {})
    assert previews.prefers_html(headers) is html


def test_a_browser_asking_for_a_range_wants_bytes():
    # Chromium resuming a download sends its navigation Accept with a Range.
    assert not previews.prefers_html(Headers({"Accept": BROWSER_ACCEPT, "Range": "bytes=100-"}))
