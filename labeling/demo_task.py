"""The embedded demo task: customer-support replies and a gold judge standing in for human taste.

A prompt is a short customer message about one of eight topics, with a name and a ticket number
(``#48213``). A reply is built from five parts whose quality varies independently: greeting,
empathy, reference to the customer's number, the concrete next step, closing; some replies ramble.

``gold_judge`` scores any text on a 0..10 scale (see its docstring): the best reply scores 10, a
corpus reply about 5 on average, a rude off-topic one 0. Pure Python: the UI process imports this.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TOPICS: tuple[str, ...] = (
    "refund",
    "late_shipping",
    "password_reset",
    "double_billing",
    "cancel_subscription",
    "damaged_item",
    "locked_account",
    "plan_upgrade",
)

NAMES: tuple[str, ...] = (
    "Maria", "James", "Aisha", "Chen", "Olivia", "Noah", "Fatima", "Lucas", "Emma", "Ravi",
    "Sofia", "Daniel", "Yuki", "Omar", "Grace", "Mateo", "Hannah", "Ivan", "Leila", "Peter",
    "Nina", "Samuel", "Zara", "Tom", "Elena", "Kofi", "Anna", "Diego", "Mei", "Jonas",
)  # fmt: skip

PRODUCTS: tuple[str, ...] = (
    "desk lamp", "coffee grinder", "rain jacket", "phone case", "yoga mat", "blender",
    "backpack", "wall clock", "headphones", "water bottle", "office chair", "toaster",
    "kettle", "monitor stand", "bike light", "board game", "keyboard", "tea set",
)  # fmt: skip

_ORDER_TOPICS = {"refund", "late_shipping", "damaged_item"}
_NUMBER_NOUN = {t: "order" for t in _ORDER_TOPICS} | {"double_billing": "invoice"}

# {ref} is "order #48213" / "account #48213" / "invoice #48213", {product} the item.
_BODIES: dict[str, tuple[str, ...]] = {
    "refund": (
        "I returned the {product} from {ref} last week and would like a refund.",
        "The {product} from {ref} is not what I expected. Can I get a refund?",
        "I want a refund for {ref}, the {product} does not work for me.",
        "Please refund {ref}. I sent the {product} back already.",
    ),
    "late_shipping": (
        "My {product} from {ref} still has not arrived. It is a week late.",
        "Where is {ref}? The {product} was supposed to arrive days ago.",
        "The shipping on {ref} is late and the tracking page has not changed.",
        "I am still waiting for the {product} in {ref}. Shipping is very late.",
    ),
    "password_reset": (
        "I forgot my password for {ref} and cannot sign in.",
        "How do I reset my password? My account is {ref}.",
        "The password for {ref} does not work anymore. I need a new one.",
        "I need to change my password on {ref} but the page shows an error.",
    ),
    "double_billing": (
        "I was charged twice for {ref}. Please fix this.",
        "My card shows two charges for the same {product}, {ref}.",
        "You billed me twice this month, see {ref}.",
        "There is a double charge on my card for {ref}.",
    ),
    "cancel_subscription": (
        "Please cancel my subscription on {ref}. I no longer need it.",
        "How do I cancel the monthly subscription for {ref}?",
        "I want to cancel my plan on {ref} before the next payment.",
        "Cancel the subscription on {ref}, please. It is too expensive for me.",
    ),
    "damaged_item": (
        "The {product} from {ref} arrived damaged. The box was crushed.",
        "My {product} came broken, {ref}. What can you do?",
        "I received {ref} today and the {product} is cracked.",
        "The {product} in {ref} was damaged in the mail.",
    ),
    "locked_account": (
        "My account {ref} is locked after too many login attempts.",
        "I am locked out of {ref}. It says the account is locked.",
        "Why is {ref} locked? I cannot get in since this morning.",
        "Help, {ref} got locked and I need to log in today.",
    ),
    "plan_upgrade": (
        "I want to upgrade {ref} to the Pro plan. How does that work?",
        "Can I upgrade my plan on {ref} to get more storage?",
        "How much does it cost to upgrade {ref} to the team plan?",
        "Please upgrade my plan on {ref}, the basic one is too small.",
    ),
}

_OPENERS = ("Hi, this is {name}.", "Hello, {name} here.", "My name is {name}.", "")
_SIGNOFFS = ("Thanks, {name}", "- {name}", "Regards, {name}")
_TONES = {
    "polite": ("Thank you!", "Thanks for your help.", ""),
    "neutral": ("",),
    "angry": ("This is ridiculous!", "I am really annoyed.", "Fix it now!"),
}

# The concrete next step for each topic; every variant contains one of the topic's keys.
_STEPS: dict[str, tuple[str, ...]] = {
    "refund": (
        "I have issued a full refund to your original payment method.",
        "I have started a full refund, it will reach your card in 5 business days.",
    ),
    "late_shipping": (
        "I have emailed you a new tracking link and upgraded the delivery to express.",
        "The courier has it in transit, and I sent you a new tracking link.",
    ),
    "password_reset": (
        "I have sent a password reset link to the email on file.",
        "Please use the reset link I just emailed you, it is valid for 30 minutes.",
    ),
    "double_billing": (
        "I can see the duplicate charge and have reversed it.",
        "I have reversed the duplicate charge, it will disappear in 3 business days.",
    ),
    "cancel_subscription": (
        "I have cancelled your subscription, and you will not be billed again.",
        "Your subscription is cancelled as of today, so you will not be billed again.",
    ),
    "damaged_item": (
        "I have arranged a free replacement and emailed you a prepaid return label.",
        "A free replacement is on its way, and the return label is in your inbox.",
    ),
    "locked_account": (
        "I have unlocked your account, so you can sign in again now.",
        "I have unlocked your account, please turn on two-factor login after signing in.",
    ),
    "plan_upgrade": (
        "I have upgraded your plan to Pro, and the difference is prorated on your next bill.",
        "I have upgraded your plan, the new features are active right away.",
    ),
}
_STEP_KEYS: dict[str, tuple[str, ...]] = {
    "refund": ("full refund",),
    "late_shipping": ("tracking link",),
    "password_reset": ("reset link",),
    "double_billing": ("duplicate charge",),
    "cancel_subscription": ("not be billed again", "cancelled your subscription"),
    "damaged_item": ("free replacement", "return label"),
    "locked_account": ("unlocked your account",),
    "plan_upgrade": ("upgraded your plan",),
}

_GREETINGS_NAMED = ("Hi {name}, thanks for reaching out.", "Hello {name},", "Dear {name},")
_GREETINGS_PLAIN = ("Hello,", "Hi there,", "Thanks for reaching out.")
_GREETINGS_RUDE = ("What do you want now?", "Ugh, another complaint.")
_EMPATHY = (
    "I am sorry about the trouble.",
    "I understand how frustrating this is.",
    "I apologize for the inconvenience.",
)
_DISMISSALS = (
    "That is not our problem.",
    "Calm down, it is not a big deal.",
    "You should have read the terms.",
)
_ORDER_REFS = ("I have pulled up {ref}.", "I checked {ref}.", "Thanks for the details on {ref}.")
_PLAIN_REFS = ("I have pulled up your {noun}.", "I checked your {noun}.")
_VAGUE = (
    "We will look into it at some point.",
    "These things happen sometimes.",
    "Please check the help center.",
    "Someone may get back to you.",
)
_CLOSINGS_GOOD = (
    "Let me know if there is anything else I can help with.",
    "Have a great day!",
    "Happy to help if you need anything else.",
)
_CLOSINGS_NEUTRAL = ("Regards.", "Thanks.")
_CLOSINGS_RUDE = ("Do not contact us again about this.", "Figure it out yourself next time.")
_FILLER = (
    "We value every customer.",
    "Our team works hard every day.",
    "As I said, we value every customer.",
)

_POLITE_START = re.compile(r"(hi|hello|dear|good (morning|afternoon))\b|thanks for reaching")
_EMPATHY_KEYS = ("sorry", "apologize", "understand how frustrating", "understand your frustration")
_CLOSING_KEYS = ("anything else", "have a great day", "have a nice day", "happy to help")
_RUDE_KEYS = (
    "not our problem", "not my problem", "calm down", "should have read", "what do you want",
    "ugh", "do not contact us", "don't contact us", "figure it out yourself", "deal with it",
    "not my job", "stupid", "waste of time", "whatever",
)  # fmt: skip
_VAGUE_KEYS = (
    "look into it",
    "these things happen",
    "check the help center",
    "may get back to you",
)
_FILLER_KEYS = ("we value every customer", "our team works hard", "as i said")

_NUMBER_RE = re.compile(r"#\s*(\d{4,6})\b")
_ANY_NUMBER_RE = re.compile(r"\b\d{4,6}\b")
_NAME_RES = (
    re.compile(r"\b(?:[Tt]his is|[Mm]y name is)\s+([A-Z][a-z]+)"),
    re.compile(r"\b([A-Z][a-z]+) here\b"),
    re.compile(r"(?:Thanks|Regards|Cheers),\s+([A-Z][a-z]+)\W*$"),
    re.compile(r"(?:^|\s)-\s*([A-Z][a-z]+)\W*$"),
)
# Keys that tell the topic of a customer message; the first topic with a hit wins, so the more
# specific ones come first ("charged twice" before "refund", "locked" before "password").
_TOPIC_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("double_billing", ("charged twice", "two charges", "billed me twice", "double charge")),
    ("cancel_subscription", ("cancel",)),
    ("plan_upgrade", ("upgrade",)),
    ("locked_account", ("locked",)),
    ("password_reset", ("password",)),
    ("damaged_item", ("damaged", "broken", "cracked")),
    ("late_shipping", ("arrived", "arrive", "late", "waiting")),
    ("refund", ("refund",)),
)


@dataclass(frozen=True)
class _Ticket:
    topic: str | None
    name: str | None
    number: str | None

    @property
    def noun(self) -> str:
        return _NUMBER_NOUN.get(self.topic or "", "account")

    @property
    def ref(self) -> str:
        return f"{self.noun} #{self.number}" if self.number else f"your {self.noun}"


def topic_of(prompt: str) -> str | None:
    """The demo topic a customer message is about, or None when it is not one of TOPICS."""
    text = prompt.lower()
    for topic, keys in _TOPIC_KEYS:
        if any(re.search(rf"\b{key}\b", text) for key in keys):
            return topic
    return None


def _parse(prompt: str) -> _Ticket:
    number = _NUMBER_RE.search(prompt)
    name = None
    for pattern in _NAME_RES:
        match = pattern.search(prompt.strip())
        if match:
            name = match.group(1).capitalize()
            break
    return _Ticket(topic_of(prompt), name, number.group(1) if number else None)


def _make_prompt(rng: random.Random, topic: str) -> str:
    name, product = rng.choice(NAMES), rng.choice(PRODUCTS)
    ticket = _Ticket(topic, name, str(rng.randint(10000, 99999)))
    body = rng.choice(_BODIES[topic]).format(ref=ticket.ref, product=product)
    tone = rng.choice(_TONES[rng.choice(tuple(_TONES))])
    opener = rng.choice(_OPENERS).format(name=name)
    signoff = "" if opener else rng.choice(_SIGNOFFS).format(name=name)
    return " ".join(part for part in (opener, body, tone, signoff) if part)


def demo_prompts(seed: int = 0) -> list[tuple[str, str]]:
    """500 distinct customer messages as (text, split): 50 train and 12-13 eval per topic."""
    rng = random.Random(f"prefloop-demo-prompts-{seed}")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for i, topic in enumerate(TOPICS):
        n_eval = 13 if i % 2 == 0 else 12
        count = 0
        while count < 50 + n_eval:
            text = _make_prompt(rng, topic)
            if text in seen:
                continue
            seen.add(text)
            rows.append((text, "train" if count < 50 else "eval"))
            count += 1
    rng.shuffle(rows)
    return rows


def _reply(prompt: str, rng: random.Random, quality: str) -> str:
    ticket = _parse(prompt)
    fmt = {"name": ticket.name or "there", "ref": ticket.ref, "noun": ticket.noun}
    other_topics = [t for t in TOPICS if t != ticket.topic]
    if quality == "best":
        parts = [
            rng.choice(_GREETINGS_NAMED if ticket.name else _GREETINGS_PLAIN),
            rng.choice(_EMPATHY),
            rng.choice(_ORDER_REFS) if ticket.number else "",
            rng.choice(_STEPS[ticket.topic]) if ticket.topic else "",
            rng.choice(_CLOSINGS_GOOD),
        ]
    elif quality == "worst":
        parts = [
            rng.choice(_GREETINGS_RUDE),
            rng.choice(_DISMISSALS),
            rng.choice(_STEPS[rng.choice(other_topics)]),
            rng.choice(_VAGUE),
            rng.choice(_CLOSINGS_RUDE),
        ]
    elif quality == "random":
        # Each part varies on its own; the probabilities set the corpus's (and so the initial
        # policy's) spread of gold scores.
        greeting = rng.choices(
            (_GREETINGS_NAMED, _GREETINGS_PLAIN, ("",), _GREETINGS_RUDE), (0.55, 0.22, 0.17, 0.06)
        )[0]
        empathy = rng.choices((_EMPATHY, ("",), _DISMISSALS), (0.58, 0.36, 0.06))[0]
        ref = rng.choices((_ORDER_REFS, _PLAIN_REFS, ("",)), (0.2, 0.45, 0.35))[0]
        step_kind = rng.choices(("right", "other", "vague", "none"), (0.78, 0.07, 0.08, 0.07))[0]
        step = {
            "right": _STEPS[ticket.topic] if ticket.topic else ("",),
            "other": _STEPS[rng.choice(other_topics)],
            "vague": _VAGUE,
            "none": ("",),
        }[step_kind]
        closing = rng.choices(
            (_CLOSINGS_GOOD, _CLOSINGS_NEUTRAL, ("",), _CLOSINGS_RUDE), (0.58, 0.15, 0.21, 0.06)
        )[0]
        parts = [rng.choice(p) for p in (greeting, empathy, ref, step, closing)]
        ramble = rng.random()
        if ramble < 0.07:  # repeat a sentence
            said = [p for p in parts if p]
            if said:
                parts.insert(rng.randrange(len(parts) + 1), rng.choice(said))
        elif ramble < 0.14:  # filler
            parts[-1:-1] = rng.sample(_FILLER, 2)
    else:
        raise ValueError(f"quality must be 'best', 'worst' or 'random', got {quality!r}")
    return " ".join(p.format(**fmt) for p in parts if p)


def reference_reply(prompt: str, quality: str = "best", seed: int = 0) -> str:
    """A reply of the given quality ("best", "worst", "random") to a demo prompt."""
    return _reply(prompt, random.Random(f"{seed}-{prompt}"), quality)


def demo_corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (prompt, reply) pairs with replies of random quality, for pretraining the demo policy.

    Prompts are fresh draws from the demo distribution (topics balanced), never an eval prompt of
    ``demo_prompts(seed)``.
    """
    eval_texts = {text for text, split in demo_prompts(seed) if split == "eval"}
    rng = random.Random(f"prefloop-demo-corpus-{seed}")
    rows: list[tuple[str, str]] = []
    while len(rows) < n:
        prompt = _make_prompt(rng, TOPICS[len(rows) % len(TOPICS)])
        if prompt not in eval_texts:
            rows.append((prompt, _reply(prompt, rng, "random")))
    return rows


def seed_preferences(
    n: int = 64, seed: int = 0, min_gap: float = 1.0
) -> list[tuple[str, str, str]]:
    """n (prompt, chosen, rejected) rows, the support demo's seed preferences: two corpus-quality
    replies (what pi_0 writes) to a train prompt of ``demo_prompts(seed)``, the one the gold judge
    scores at least `min_gap` higher chosen. They stand in for the open preference data that the
    RLHF Workflow recipe fits its proxy on before the first online iteration; eval prompts never
    appear, so the held-out win-rate stays held out."""
    train = [text for text, split in demo_prompts(seed) if split == "train"]
    rng = random.Random(f"prefloop-demo-seed-prefs-{seed}")
    rows: list[tuple[str, str, str]] = []
    for prompt in rng.sample(train, len(train)):
        a, b = _reply(prompt, rng, "random"), _reply(prompt, rng, "random")
        gap = gold_judge(prompt, a) - gold_judge(prompt, b)
        if abs(gap) >= min_gap:
            rows.append((prompt, a, b) if gap > 0 else (prompt, b, a))
        if len(rows) == n:
            return rows
    raise ValueError(f"only {len(rows)} of {n} seed preferences with a gold gap >= {min_gap}")


def gold_pairs(n: int = 64, seed: int = 0, min_gap: float = 3.0) -> list[tuple[str, str, str, str]]:
    """n (prompt, a, b, answer) gold pairs for the support demo: two corpus-quality replies to a
    train prompt whose gold scores differ by at least `min_gap` (a clear answer, as a labeling
    lead picks gold items), `answer` the better one's side ("a" or "b", drawn). Built as
    ``seed_preferences`` builds its rows, from a random stream of their own."""
    train = [text for text, split in demo_prompts(seed) if split == "train"]
    rng = random.Random(f"prefloop-demo-gold-{seed}")
    rows: list[tuple[str, str, str, str]] = []
    for prompt in rng.sample(train, len(train)):
        better, worse = _reply(prompt, rng, "random"), _reply(prompt, rng, "random")
        gap = gold_judge(prompt, better) - gold_judge(prompt, worse)
        if abs(gap) < min_gap:
            continue
        if gap < 0:
            better, worse = worse, better
        rows.append(
            (prompt, better, worse, "a") if rng.random() < 0.5 else (prompt, worse, better, "b")
        )
        if len(rows) == n:
            return rows
    raise ValueError(f"only {len(rows)} of {n} gold pairs with a gold gap >= {min_gap}")


def _has_any(text: str, keys: tuple[str, ...]) -> bool:
    return any(key in text for key in keys)


def _repetition_penalty(text: str) -> float:
    sentences = [s.strip() for s in re.split(r"[.!?]+", text) if len(s.split()) >= 3]
    repeated = len(sentences) - len(set(sentences))
    words = re.findall(r"[a-z0-9']+", text)
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    repeated_frac = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    return min(4.0, 1.5 * repeated + 8.0 * max(0.0, repeated_frac - 0.15))


def gold_judge(prompt: str, response: str) -> float:
    """Deterministic quality of a reply to a customer message, 0 (useless or rude) to 10 (ideal).

    Credits: the topic's concrete next step +4; the customer's ticket number +1.5; empathy +1.5;
    a polite greeting +1; the customer's name +1; a helpful closing +1 (sum 10).
    Penalties: each other topic's step -1.5; each vague non-answer or boilerplate filler phrase -1;
    a wrong ticket number or a
    wrong customer name -1; each rude phrase -2.5; repeated sentences or trigrams up to -4;
    fewer than 6 words -2; beyond 60 words -0.1 a word, up to -4. Clipped to [0, 10].
    Parts that need the prompt (topic, number, name) count only when the prompt has them, so any
    text scores, and an empty reply scores 0.
    """
    text = " ".join(response.lower().split())
    words = text.split()
    if not words:
        return 0.0
    ticket = _parse(prompt)
    score = 0.0

    for topic in TOPICS:
        if _has_any(text, _STEP_KEYS[topic]):
            score += 4.0 if topic == ticket.topic else -1.5
    score -= 1.0 * sum(key in text for key in _VAGUE_KEYS + _FILLER_KEYS)

    numbers = set(_ANY_NUMBER_RE.findall(text))
    if ticket.number and ticket.number in numbers:
        score += 1.5
    if numbers - {ticket.number}:
        score -= 1.0

    names = set(re.findall(r"[A-Za-z]+", response)) & set(NAMES)
    if ticket.name and ticket.name in names:
        score += 1.0
    if names - {ticket.name}:
        score -= 1.0

    score += 1.0 * (_POLITE_START.match(text) is not None)
    score += 1.5 * _has_any(text, _EMPATHY_KEYS)
    score += 1.0 * _has_any(text, _CLOSING_KEYS)
    score -= 2.5 * sum(re.search(rf"\b{re.escape(key)}\b", text) is not None for key in _RUDE_KEYS)

    score -= _repetition_penalty(text)
    if len(words) < 6:
        score -= 2.0
    score -= min(4.0, 0.1 * max(0, len(words) - 60))
    return round(min(10.0, max(0.0, score)), 4)
