"""The SMS conversation engine: conversation state + one reply -> new state + texts to send.

Care workers answer a survey by replying to texts, one question at a time. This module is
pure: it reads no database, sends nothing and knows nothing of HTTP. The caller (the bot
layer) keeps a :class:`State` per invitation (``State.to_dict()`` in a JSON column), and for
every inbound text:

1. checks :func:`keyword` first (STOP / START / HELP are never answers; the bot layer acts
   on them and may reply with :func:`stopped_reply`, :func:`restarted_reply` or
   :func:`help_reply`);
2. otherwise calls :func:`step`, stores ``Outcome.answer`` and ``Outcome.state``, and sends
   ``Outcome.replies`` in order.

A survey is opened with :func:`start`. Every message this module produces is GSM-7 and fits
ONE SMS segment (160 characters): each message is built from its most informative form down
to shorter fallbacks, and names and other caller text are made GSM-safe (accents dropped)
rather than letting one "â" switch a message to UCS-2. Messages are short and kind and
never judge an answer; support messages (:class:`Signpost`) are the programme's own words.

Reply order (:func:`step`): any signpost messages triggered by the answer come first, each
as its own message, right after the answer is accepted; the next question (or the thank-you)
is always the last message, so the text a worker replies to is the one that asks something.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Literal, NamedTuple, TypeAlias

from surveys.instruments import InstrumentDefinition, Item, ResponseScale
from surveys.sms import fit_one_segment, fits_one_segment, gsm_safe

__all__ = [
    "GIVE_UP_NOTE",
    "Invalid",
    "InvalidReason",
    "Keyword",
    "Outcome",
    "Parsed",
    "Signpost",
    "Skip",
    "State",
    "Survey",
    "Value",
    "already_finished_reply",
    "help_reply",
    "keyword",
    "nothing_open_reply",
    "parse_answer",
    "question",
    "reask_reply",
    "restarted_reply",
    "start",
    "step",
    "stopped_reply",
    "thank_you_reply",
    "unknown_number_reply",
]

GIVE_UP_NOTE = "No problem, let's move on."
"""Put before the next question when a question is left after too many unclear replies."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Survey:
    """What the engine needs to know about one invitation's survey.

    `title` names the survey in the opening text ("morale survey", or the instrument's
    title); `relation` is the rater's relation (see ``surveys.instruments.RELATIONS``),
    which picks the "I ..." or "My manager ..." wording of a 360-degree item; None for a
    survey that is not a 360.
    """

    title: str
    instrument: InstrumentDefinition
    relation: str | None = None

    @property
    def total(self) -> int:
        """How many questions the survey has."""
        return len(self.instrument.items)


@dataclass(frozen=True)
class State:
    """Where one conversation is. Stored by the caller as JSON (:meth:`to_dict`).

    `position` is the index into ``instrument.items`` of the question being asked; `tries`
    the unclear replies to it so far; `signposted` the ids of the support messages already
    sent (each is sent at most once); `finished` whether every question has been dealt with.
    """

    position: int = 0
    tries: int = 0
    signposted: tuple[str, ...] = ()
    finished: bool = False

    def __post_init__(self) -> None:
        if self.position < 0:
            raise ValueError(f"position must not be negative, not {self.position}")
        if self.tries < 0:
            raise ValueError(f"tries must not be negative, not {self.tries}")
        object.__setattr__(self, "signposted", tuple(self.signposted))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` reverses it."""
        return {
            "position": self.position,
            "tries": self.tries,
            "signposted": list(self.signposted),
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> State:
        """The state stored as `data`; missing keys (or no data at all) take the defaults."""
        data = data or {}
        return cls(
            position=int(data.get("position") or 0),
            tries=int(data.get("tries") or 0),
            signposted=tuple(str(s) for s in data.get("signposted") or ()),
            finished=bool(data.get("finished") or False),
        )


@dataclass(frozen=True)
class Signpost:
    """A programme's support message, sent once when an answer to an item is in `values`.

    For example morale 1 -> "If things feel hard, you can talk to Samaritans free, any
    time, on 116 123." The engine sends `message` verbatim (made GSM-safe): the programme
    chooses the words, and they must never judge the answer. The message must fit one
    SMS segment; a longer one is refused here, when the programme is set up.
    """

    id: str
    instrument: str
    """Key of the instrument, e.g. ``staff_morale``."""
    item_id: str
    values: frozenset[int]
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", frozenset(self.values))
        if not self.id:
            raise ValueError("a signpost needs an id")
        if not self.values:
            raise ValueError(f"signpost {self.id!r} names no answer values")
        if not self.text or not fits_one_segment(self.text):
            raise ValueError(
                f"signpost {self.id!r}: the message must be 1 to 160 GSM-7 characters"
                f" (one SMS), it is {len(self.text)}"
            )

    @property
    def text(self) -> str:
        """The message as sent: GSM-safe, surrounding whitespace removed."""
        return gsm_safe(self.message).strip()

    def applies(self, instrument: str, item_id: str, value: int) -> bool:
        """Whether answering `value` to `item_id` of `instrument` calls for this message."""
        return self.instrument == instrument and self.item_id == item_id and value in self.values


@dataclass(frozen=True)
class Outcome:
    """What one reply did.

    `answer` is ``(item_id, value)`` for the item this reply dealt with: value None means
    skipped (SKIP) or left unanswered after too many unclear replies; `answer` itself is
    None when nothing was answered (an unclear reply to re-ask, or a reply after the end).
    `replies` are the texts to send, in order.
    """

    state: State
    answer: tuple[str, int | None] | None
    replies: tuple[str, ...]
    finished: bool


InvalidReason: TypeAlias = Literal["empty", "ambiguous", "out_of_range", "not_a_number"]
Keyword: TypeAlias = Literal["stop", "start", "help"]


@dataclass(frozen=True)
class Value:
    """A reply that is one answer on the scale."""

    value: int


@dataclass(frozen=True)
class Skip:
    """A reply asking to skip the question (SKIP, pass)."""


@dataclass(frozen=True)
class Invalid:
    """A reply that is not one answer on the scale.

    `reason`: ``empty`` (nothing visible), ``ambiguous`` (more than one answer, between
    two answers, or a number in words we cannot be sure of), ``out_of_range`` (one
    number, not on the scale) or ``not_a_number``. `numbers` helps the re-ask: for
    ``ambiguous`` the on-scale answers the reply could mean (``(3, 4)`` for "3 or 4"),
    for ``out_of_range`` the number given (``(9,)``); it may be empty.
    """

    reason: InvalidReason
    numbers: tuple[int, ...] = ()


Parsed: TypeAlias = Value | Skip | Invalid


# --------------------------------------------------------------------------- parsing

_NUMBER_WORDS = {
    "zero": 0,
    "nought": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}

# Words that may come before the number without changing it: "it's a 4", "hi, 4",
# "I'd say 4". Any other word before the number ("not 4", "more than 3") makes the reply
# ambiguous. Anything after the number is taken as a comment: "4 - good", "4, not bad".
_LEAD_TEXT = (
    "it's its it is a an i i'd id i'll ill i'm would say said give go for with answer my "
    "score rating rate about around maybe probably hi hello hiya hey ok okay oh um umm erm "
    "er hmm well so right yes yeah sure definitely honestly q question number thanks "
    "thank you ta"
)
_LEAD_WORDS = frozenset(_LEAD_TEXT.split())

_SKIP_PHRASES = frozenset(
    {
        "skip",
        "pass",
        "skip please",
        "please skip",
        "skip it",
        "skip this",
        "skip this one",
        "skip question",
        "skip this question",
        "pass please",
        "n a",
    }
)

_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "`": "'", "\u00b4": "'"})
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"})

_TOKEN = re.compile(r"(?P<num>\d+(?:\.\d+)?)|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)|(?P<slash>/)")
_LONGEST_NUMBER = 18  # digits; longer runs are simply "a huge number"


class _Token(NamedTuple):
    kind: Literal["num", "word", "slash"]
    text: str
    number: Decimal | None = None


def _is_fraction(ch: str) -> bool:
    """Whether `ch` is a fraction character such as ½ or ¾."""
    value = unicodedata.numeric(ch, None)
    return value is not None and value != int(value)


def _normalise(text: str) -> str:
    """`text` for matching: compatibility forms folded (fullwidth "４" -> "4"), invisible
    characters removed (keycap and variation marks, RTL marks, zero-width spaces), curly
    apostrophes and dashes made plain, case folded, whitespace collapsed."""
    # "3½" would fold to "31⁄2": spell a fraction character out first, read as "half".
    text = "".join(" half " if _is_fraction(ch) else ch for ch in text)
    out: list[str] = []
    for ch in unicodedata.normalize("NFKC", text):
        if ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) not in ("Mn", "Me", "Cf", "Cc"):
            out.append(ch)
    folded = "".join(out).translate(_APOSTROPHES).translate(_DASHES).casefold()
    return " ".join(folded.split())


def _phrase(normalised: str) -> str:
    """The words of `normalised` text only, apostrophes dropped: "Don't stop!" -> "dont stop"."""
    return " ".join(re.findall(r"[^\W_]+", normalised.replace("'", "")))


def _tokens(text: str) -> list[_Token]:
    """Numbers (digits or number words, signed), words and slashes of normalised `text`."""
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        raw = match.group()
        if kind == "num":
            whole, _, fraction = raw.partition(".")
            digits = "".join(str(unicodedata.decimal(c)) for c in whole)
            if len(digits.lstrip("0")) > _LONGEST_NUMBER:
                digits = "9" * _LONGEST_NUMBER
            if fraction:
                digits += "." + "".join(str(unicodedata.decimal(c)) for c in fraction)
            number = Decimal(digits)
            at = match.start()
            # A minus sign right before the digits, not between two numbers ("3-4").
            if at > 0 and text[at - 1] == "-" and (at == 1 or not text[at - 2].isalnum()):
                number = -number
            tokens.append(_Token("num", raw, number))
        elif kind == "word" and raw in _NUMBER_WORDS:
            tokens.append(_Token("num", raw, Decimal(_NUMBER_WORDS[raw])))
        elif kind == "word":
            tokens.append(_Token("word", raw))
        else:
            tokens.append(_Token("slash", raw))
    return tokens


def _numbers(tokens: list[_Token], scale_max: int) -> list[Decimal]:
    """The numbers in `tokens`, with "4/5", "4 out of 5" and "4 of 5" read as 4 when the
    denominator is the top of the scale."""
    found: list[Decimal] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.kind != "num" or token.number is None:
            i += 1
            continue
        found.append(token.number)
        rest = [t.text if t.kind != "num" else "#" for t in tokens[i + 1 : i + 4]]
        for joiner in (["/"], ["out", "of"], ["of"]):
            k = i + 1 + len(joiner)
            if (
                rest[: len(joiner)] == joiner
                and k < len(tokens)
                and tokens[k].kind == "num"
                and tokens[k].number == scale_max
            ):
                i = k  # skip the denominator
                break
        i += 1
    return found


def _on_scale(numbers: Sequence[Decimal], scale: ResponseScale) -> tuple[int, ...]:
    """The answers on `scale` that `numbers` could mean (3.5 could mean 3 or 4)."""
    candidates: set[int] = set()
    for number in numbers:
        for rounding in (ROUND_FLOOR, ROUND_CEILING):
            candidates.add(int(number.to_integral_value(rounding=rounding)))
    return tuple(sorted(v for v in candidates if scale.min <= v <= scale.max))


def _label_value(phrase: str, scale: ResponseScale) -> int | None:
    """The value whose label is exactly `phrase` (any case), if exactly one label is."""
    matches = [v for v, label in scale.labels.items() if _phrase(_normalise(label)) == phrase]
    return matches[0] if len(matches) == 1 else None


def _run_together(value: int, scale: ResponseScale) -> tuple[int, ...]:
    """The digits of `value` when it looks like answers typed without a gap ("34" for
    "3 or 4" on a 1-5 scale): 2 or 3 different digits, each on a one-digit scale."""
    digits = str(value)
    if value < 10 or scale.min < 0 or scale.max > 9 or len(digits) > 3:
        return ()
    values = [int(d) for d in digits]
    if len(set(values)) != len(values) or not all(scale.min <= v <= scale.max for v in values):
        return ()
    return tuple(sorted(values))


def parse_answer(text: str, scale: ResponseScale) -> Parsed:
    """Read one SMS reply as an answer on `scale`: a :class:`Value`, :class:`Skip` or
    :class:`Invalid`.

    Generous where it is safe: "4", " 4.", "4!", "#4", "4️⃣", "４" (fullwidth), other
    scripts' digits ("٤"), "four"/"FOUR" (zero to ten), "it's a 4", "4 - good", "4 good",
    "4/5", "4 out of 5", "4.0", and a whole reply that is exactly one label of the scale,
    in any case ("very low" -> 1). "SKIP", "skip", "pass", "skip please", "n/a" -> Skip.

    Strict where it matters (a wrong answer is worse than asking again):

    - two different numbers ("3 or 4", "3-4", "3,4", "3/4" on a 1-5 scale) -> ambiguous;
      "4/5" is 4 only because 5 is the top of the scale; the same number twice is fine;
    - a number between two answers ("3.5", "3 and a half", "3½") -> ambiguous;
    - "34" (a run of 2-3 different digits, each on a one-digit scale) -> ambiguous, read
      as "3 or 4" typed without a gap; "10" (0 is not on the scale), "44" -> out_of_range;
    - words before the number other than fillers ("not 4", "more than 3") -> ambiguous;
      anything after it is a comment ("4, not bad"), unless the comment is exactly the
      label of a different answer ("2 strongly agree") -> ambiguous;
    - one number off the scale ("9", "0", "-1", "10") -> out_of_range;
    - nothing visible -> empty; no number and no label ("good", "dunno", "STOP") ->
      not_a_number. Keywords are not answers: check :func:`keyword` first.
    """
    normalised = _normalise(text)
    if not normalised:
        return Invalid("empty")
    phrase = _phrase(normalised)
    if phrase in _SKIP_PHRASES:
        return Skip()
    tokens = _tokens(normalised)
    numbers = _numbers(tokens, scale.max)
    if not numbers:
        label = _label_value(phrase, scale)
        return Value(label) if label is not None else Invalid("not_a_number")

    words = [t.text for t in tokens if t.kind == "word"]
    if "half" in words:
        return Invalid("ambiguous", _on_scale([n + Decimal("0.5") for n in numbers], scale))
    if len(set(numbers)) > 1:
        return Invalid("ambiguous", _on_scale(numbers, scale))
    first = next(i for i, t in enumerate(tokens) if t.kind == "num")
    if any(t.kind == "word" and t.text not in _LEAD_WORDS for t in tokens[:first]):
        return Invalid("ambiguous")
    number = numbers[0]
    if number != number.to_integral_value():
        return Invalid("ambiguous", _on_scale([number], scale))
    value = int(number)
    if not scale.min <= value <= scale.max:
        run = _run_together(value, scale)
        if run:
            return Invalid("ambiguous", run)
        return Invalid("out_of_range", (value,) if abs(value) < 10**6 else ())
    last = max(i for i, t in enumerate(tokens) if t.kind == "num")
    comment = " ".join(t.text.replace("'", "") for t in tokens[last + 1 :] if t.kind == "word")
    label = _label_value(comment, scale) if comment else None
    if label is not None and label != value:
        return Invalid("ambiguous", tuple(sorted((value, label))))
    return Value(value)


# --------------------------------------------------------------------------- keywords

_STOP_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"}
)
_START_WORDS = frozenset({"start", "yes", "unstop"})
_HELP_WORDS = frozenset({"help", "info"})
_POLITE = frozenset({"please", "pls", "plz", "now", "thanks", "thank", "you", "thx", "ta"})
# "stop texting me", "stop sending me these messages", "unsubscribe me", "stop it".
_STOP_LEADS = frozenset({"stop", "stopall", "unsubscribe"})
_STOP_OBJECT_TEXT = (
    "texting text texts txt txts txting messaging message messages msgs sending send "
    "contacting me these the them this it all sms survey surveys"
)
_STOP_OBJECTS = frozenset(_STOP_OBJECT_TEXT.split())
_STOP_PHRASES = frozenset(
    {
        ("opt", "out"),
        ("opt", "me", "out"),
        ("remove", "me"),
        ("no", "more", "texts"),
        ("no", "more", "messages"),
    }
)


def keyword(text: str) -> Keyword | None:
    """The opt-out/in or help keyword that `text` is, as a whole message, or None.

    ``stop``: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT (and Twilio's newer OPTOUT,
    REVOKE); ``start``: START, YES, UNSTOP; ``help``: HELP, INFO. Any case, surrounding
    whitespace and punctuation ignored ("Stop.", " STOP! "). The whole message must be the
    keyword, except that a clear request to stop texting also counts as STOP (UK practice
    honours clear opt-out intent): "please stop", "stop texting me", "stop sending me
    these messages", "unsubscribe me", "opt out", "no more texts". A message that merely
    contains the word does not: "don't stop", "can I stop?", "stop 4", "cancel that".
    "yes" alone is START, as on Twilio.
    """
    words = _phrase(_normalise(text)).split()
    if len(words) == 1:
        word = words[0]
        if word in _STOP_WORDS:
            return "stop"
        if word in _START_WORDS:
            return "start"
        if word in _HELP_WORDS:
            return "help"
    core = [w for w in words if w not in _POLITE]
    if len(core) == 1 and core[0] in _STOP_WORDS:
        return "stop"
    if core and core[0] in _STOP_LEADS and all(w in _STOP_OBJECTS for w in core[1:]):
        return "stop"
    if tuple(core) in _STOP_PHRASES:
        return "stop"
    return None


# --------------------------------------------------------------------------- composing


def _clean(text: str | None) -> str:
    """Caller text (a home or programme name) made GSM-safe, whitespace collapsed."""
    return " ".join(gsm_safe(text or "").split())


def _first_name(name: str | None) -> str | None:
    """The first word of a given name, GSM-safe ("Siân Rees" -> "Sian"); None if nothing
    printable is left (a name in a script GSM-7 cannot show)."""
    words = _clean(name).split()
    if not words or not any(c.isalnum() for c in words[0]):
        return None
    return words[0]


def _best_fit(render: Callable[[frozenset[str]], str], drop_order: Sequence[str]) -> str:
    """The fullest one-segment message `render` can make.

    Features are dropped in `drop_order` until the message fits; then those dropped are
    tried again, most valued first, in case a later drop made room for them. If nothing
    fits, the message without any feature is returned.
    """
    active = set(drop_order)
    dropped: list[str] = []
    message = gsm_safe(render(frozenset(active)))
    for feature in drop_order:
        if fits_one_segment(message):
            break
        active.discard(feature)
        dropped.append(feature)
        message = gsm_safe(render(frozenset(active)))
    for feature in reversed(dropped):
        trial = gsm_safe(render(frozenset(active | {feature})))
        if fits_one_segment(trial):
            active.add(feature)
            message = trial
    return message


def _current_item(survey: Survey, state: State) -> Item:
    if state.finished or state.position >= survey.total:
        raise ValueError("the survey is finished: there is no current question")
    return survey.instrument.items[state.position]


def _question_body(survey: Survey, position: int, *, labels: bool, number: bool) -> str:
    """ "Q2/11 <SMS wording> Reply 1-5 (1=..., 5=...) or SKIP", with or without the parts."""
    item = survey.instrument.items[position]
    wording = survey.instrument.sms_text(item.id, survey.relation)
    scale = item.scale
    hint = scale.sms_hint() if labels else f"Reply {scale.min}-{scale.max}"
    counter = f"Q{position + 1}/{survey.total} " if number and survey.total > 1 else ""
    return f"{counter}{wording} {hint} or SKIP"


def question(
    survey: Survey, state: State, first_name: str | None = None, intro: str | None = None
) -> str:
    """The current question as one GSM-7 segment.

    Full form: ``[Hi {first_name}!] [intro] Q2/11 <question> Reply 1-5 (1=Strongly
    disagree, 5=Strongly agree) or SKIP``; no "Q1/1" for a one-question survey. When it is
    too long, parts are dropped in this order until it fits: the greeting, the `intro`,
    the labels in the hint ("Reply 1-5 or SKIP"), the question number. Raises ValueError
    if the survey is finished.
    """
    _current_item(survey, state)
    name = _first_name(first_name)
    lead = _clean(intro)

    def render(features: frozenset[str]) -> str:
        parts = []
        if name and "greeting" in features:
            parts.append(f"Hi {name}!")
        if lead and "intro" in features:
            parts.append(lead)
        parts.append(
            _question_body(
                survey,
                state.position,
                labels="labels" in features,
                number="number" in features,
            )
        )
        return " ".join(parts)

    return _best_fit(render, ("greeting", "intro", "labels", "number"))


def start(
    survey: Survey,
    first_name: str | None,
    home: str | None,
    *,
    position: int | None = None,
    total: int | None = None,
) -> tuple[State, str]:
    """Open a survey: the new :class:`State` and the first text, one GSM-7 segment.

    Full form: ``Hi Sam, this is the Willow Court morale survey. <first question>. STOP to
    opt out``; with `position` and `total` (several surveys open, total > 1): ``Hi Sam,
    survey 1 of 2: the Willow Court morale survey. ...``. A title that does not say
    "survey" (an instrument's own title) is introduced as ``Hi Sam, a short survey for
    Willow Court: How the care home manager leads.``. When it is too long, parts are dropped
    in this order until it fits: the home, the labels of the answer hint, the question
    number, "survey 1 of 2", the first name, the survey title, and last "STOP to opt out"
    (kept whenever it fits). Nothing is cut mid-word.
    """
    if (position is None) != (total is None):
        raise ValueError("give both position and total, or neither")
    if position is not None and total is not None and not 1 <= position <= total:
        raise ValueError(f"position {position} is not between 1 and total {total}")
    state = State()
    _current_item(survey, state)
    name = _first_name(first_name)
    where = _clean(home)
    title = _clean(survey.title).rstrip(".!?:;, ")
    count = f"survey {position} of {total}" if total is not None and total > 1 else ""
    calls_itself_a_survey = "survey" in title.casefold().split()

    def render(features: frozenset[str]) -> str:
        hi = f"Hi {name}" if name and "name" in features else "Hi"
        named = bool(title) and "title" in features
        at = f"{where} " if where and "home" in features else ""
        counted = count if count and "position" in features else ""
        if named and calls_itself_a_survey:  # "this is the Willow Court morale survey"
            intro = f"{hi}, {counted or 'this is'}{':' if counted else ''} the {at}{title}."
        elif named:  # "a short survey for Willow Court: How the care home manager leads"
            lead = counted or "a short survey"
            intro = f"{hi}, {lead}{' for ' + where if at else ''}: {title}."
        elif counted:
            intro = f"{hi}, {counted}{' for ' + where if at else ''}."
        else:
            intro = f"{hi}!"
        body = _question_body(survey, 0, labels="labels" in features, number="number" in features)
        stop = ". STOP to opt out" if "stop" in features else ""
        return f"{intro} {body}{stop}"

    message = _best_fit(render, ("home", "labels", "number", "position", "name", "title", "stop"))
    return state, message


# --------------------------------------------------------------------------- the step


def step(
    survey: Survey,
    state: State,
    text: str,
    *,
    max_tries: int = 2,
    signposts: Sequence[Signpost] = (),
    first_name: str | None = None,
    more_surveys: bool = False,
) -> Outcome:
    """Apply one reply (`text`) to the current question.

    - An answer on the scale: recorded, and the conversation moves on. The replies are any
      matching :class:`Signpost` messages not sent before (each once per conversation, by
      id, remembered in ``state.signposted``), then the next question, or the thank-you
      when that was the last question.
    - SKIP: recorded as None (``answer=(item_id, None)``), then the next question.
    - An unclear reply: a short re-ask saying what was wrong (:func:`reask_reply`), no
      answer, ``tries`` + 1. When the tries reach `max_tries` the question is left
      unanswered instead (``answer=(item_id, None)``) and the next question is sent with
      "No problem, let's move on." in front when that still fits one segment.
    - Any reply after the end: ``finished=True``, no answer, :func:`already_finished_reply`.

    `first_name` personalises the thank-you and the already-finished reply; set
    `more_surveys` when the caller will open another survey right after this one, so the
    thank-you does not say "that's everything". Keywords (STOP, HELP ...) are not handled
    here: check :func:`keyword` first.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be at least 1, not {max_tries}")
    if state.finished or state.position >= survey.total:
        done = replace(state, finished=True, tries=0)
        return Outcome(done, None, (already_finished_reply(first_name),), True)
    item = survey.instrument.items[state.position]
    parsed = parse_answer(text, item.scale)
    if isinstance(parsed, Invalid):
        tries = state.tries + 1
        if tries < max_tries:
            return Outcome(
                replace(state, tries=tries), None, (reask_reply(parsed, item.scale),), False
            )
        return _advance(survey, state, item, None, GIVE_UP_NOTE, (), first_name, more_surveys)
    value = parsed.value if isinstance(parsed, Value) else None
    return _advance(survey, state, item, value, None, signposts, first_name, more_surveys)


def _advance(
    survey: Survey,
    state: State,
    item: Item,
    value: int | None,
    note: str | None,
    signposts: Sequence[Signpost],
    first_name: str | None,
    more_surveys: bool,
) -> Outcome:
    """Record `value` for `item` and move to the next question (or finish)."""
    support: list[str] = []
    sent = list(state.signposted)
    if value is not None:
        for signpost in signposts:
            if signpost.id not in sent and signpost.applies(survey.instrument.key, item.id, value):
                support.append(signpost.text)
                sent.append(signpost.id)
    position = state.position + 1
    finished = position >= survey.total
    new = State(position=position, tries=0, signposted=tuple(sent), finished=finished)
    if finished:
        follow = thank_you_reply(first_name, more_surveys=more_surveys)
    else:
        follow = question(survey, new, intro=note)
    return Outcome(new, (item.id, value), (*support, follow), finished)


# --------------------------------------------------------------------------- templates


def _spoken_list(values: Sequence[int]) -> str:
    """ "3 or 4", "2, 3 or 4"."""
    words = [str(v) for v in values]
    return f"{', '.join(words[:-1])} or {words[-1]}"


def reask_reply(invalid: Invalid, scale: ResponseScale) -> str:
    """A short, specific re-ask for an unclear reply, one segment. Never a judgement.

    e.g. "Sorry, please reply with one number from 1 to 5, or SKIP.", "Please choose one
    number: 3 or 4?", "9 is not on the scale. Please reply 1-5, or SKIP."
    """
    low, high = scale.min, scale.max
    one_number = f"one number from {low} to {high}"
    labelled = f"{one_number} ({low}={scale.labels[low]}, {high}={scale.labels[high]})"
    if invalid.reason == "empty":
        return fit_one_segment(
            f"Sorry, your message was empty. Please reply with {labelled}, or SKIP.",
            f"Sorry, your message was empty. Please reply with {one_number}, or SKIP.",
        )
    if invalid.reason == "out_of_range":
        shown = f"{invalid.numbers[0]}" if len(invalid.numbers) == 1 else "That number"
        return fit_one_segment(f"{shown} is not on the scale. Please reply {low}-{high}, or SKIP.")
    if invalid.reason == "ambiguous":
        if 2 <= len(invalid.numbers) <= 4:
            return fit_one_segment(f"Please choose one number: {_spoken_list(invalid.numbers)}?")
        return fit_one_segment(f"Sorry, please reply with just {one_number}, or SKIP.")
    return fit_one_segment(
        f"Sorry, please reply with {labelled}, or SKIP.",
        f"Sorry, please reply with {one_number}, or SKIP.",
    )


def thank_you_reply(first_name: str | None = None, *, more_surveys: bool = False) -> str:
    """The last text of a survey: "Thank you, Sam - that's everything. Your answers help
    improve your care home." With `more_surveys`, says this survey is done and another
    follows."""
    name = _first_name(first_name)
    if more_surveys:
        done = "that's this survey done"
        after = " The next one follows."
    else:
        done, after = "that's everything", ""
    thanks = "Your answers help improve your care home."
    return fit_one_segment(
        *([f"Thank you, {name} - {done}. {thanks}{after}"] if name else []),
        f"Thank you - {done}. {thanks}{after}",
    )


def help_reply(programme_name: str, contact: str | None = None) -> str:
    """The reply to HELP: who is texting, why, that answers are confidential, who to ask,
    how to stop. Drops the programme name, then the contact, when they make it too long."""
    programme = _clean(programme_name).rstrip(".")
    who = _clean(contact).rstrip(".")
    what = "short surveys about your care home. Answers are confidential."
    stop = "Reply STOP to opt out."
    variants = []
    if programme and who:
        variants.append(f"carepulse texts for {programme}: {what} Questions: {who}. {stop}")
    if who:
        variants.append(f"carepulse: {what} Questions: {who}. {stop}")
    if programme:
        variants.append(f"carepulse texts for {programme}: {what} {stop}")
    variants.append(f"carepulse: {what} {stop}")
    return fit_one_segment(*variants)


def stopped_reply() -> str:
    """The reply to STOP.

    On a Twilio long code with default opt-out handling, Twilio itself blocks the number
    and sends its own confirmation for STOP; the bot layer decides whether to send this too
    (e.g. only where Twilio's handling is off, or on channels without it).
    """
    return fit_one_segment("You won't get more texts from us. Reply START to opt back in.")


def restarted_reply() -> str:
    """The reply to START (or YES, UNSTOP): texts are back on."""
    return fit_one_segment(
        "Welcome back - you'll get our survey texts again. Reply HELP for help or STOP to opt out."
    )


def unknown_number_reply() -> str:
    """The reply to a text from a number that is not on any roster: polite, says no
    survey is linked to it and that no answer was recorded."""
    return fit_one_segment(
        "Sorry, we don't recognise this number, so there is no survey for it and no answer"
        " has been recorded. If you think this is a mistake, please ask your manager."
    )


def nothing_open_reply(first_name: str | None = None) -> str:
    """The reply when someone on the roster texts but has no survey open now."""
    name = _first_name(first_name)
    text = "There's no survey open for you right now - we'll text you when there is one."
    return fit_one_segment(*([f"Thanks, {name}. {text}"] if name else []), f"Thanks. {text}")


def already_finished_reply(first_name: str | None = None) -> str:
    """The reply to a text after the survey is finished: nothing more to answer."""
    name = _first_name(first_name)
    text = "you've already answered this survey, so there's nothing more to do."
    return fit_one_segment(*([f"Thanks, {name} - {text}"] if name else []), f"Thanks - {text}")
