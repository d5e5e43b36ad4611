"""What the demo's users say: alice's three topics (travel, food, work), a few confidential
details, one fact that will change, and bob's small talk."""

from __future__ import annotations

from typing import Any

_ALICE_TRAVEL = [
    "Alice is planning a hiking trip to the Dolomites in July.",
    "Alice wants a mountain hut with a view of the Tre Cime for the hiking trip.",
    "Alice asked which trails in the Dolomites suit a four-day hike.",
    "Alice will fly into Venice and take a bus to Cortina for the hike.",
    "Alice prefers hiking trails with fewer than 1,200 metres of climbing a day.",
    "Alice booked the Rifugio Locatelli mountain hut for two nights in July.",
    "Alice asked for a packing list for a hut-to-hut hike in the Dolomites.",
    "Alice wants to see the sunrise from the Tre Cime during her hiking trip.",
    "Alice's hiking partner for the Dolomites trip is her sister Claire.",
    "Alice asked about the weather in the Dolomites in mid July for hiking.",
]
_ALICE_FOOD = [
    "Alice is vegetarian and does not eat fish either.",
    "Alice prefers green tea and never drinks coffee.",
    "Alice asked for vegetarian restaurants near Lyon's Part-Dieu station.",
    "Alice loves Lebanese food, especially falafel and tabbouleh.",
    "Alice is learning to cook vegetarian Indian curries at home.",
    "Alice dislikes very spicy food but enjoys mild vegetarian curries.",
    "Alice asked for a recipe for a vegetarian lentil dal.",
    "Alice buys her vegetables at the Croix-Rousse market on Saturdays.",
    "Alice wants vegetarian restaurant ideas for her sister's birthday dinner.",
    "Alice drinks green tea in the afternoon and avoids caffeine after 4 pm.",
]
_ALICE_WORK = [
    "Alice works as a data engineer at a logistics company.",
    "Alice is migrating her team's pipelines from Airflow to Dagster at work.",
    "Alice asked how to partition a Parquet dataset by date for her pipelines.",
    "Alice's team at work runs its data pipelines on Kubernetes.",
    "Alice is preparing a talk at work about data quality checks in pipelines.",
    "Alice asked how to test Dagster pipelines before deploying them at work.",
    "Alice's manager at work asked her to cut pipeline costs by a fifth.",
    "Alice wants to learn Rust to speed up a slow data pipeline at work.",
    "Alice asked about schema evolution for Parquet files in her pipelines.",
    "Alice works remotely on Fridays and at the office the rest of the week.",
]
#: Confidential: they never reach an agent cleared below CONFIDENTIAL.
ALICE_CONFIDENTIAL = [
    "Alice's doctor diagnosed her with asthma; she carries an inhaler on hikes.",
    "Alice pays for the trip with her Visa card ending in 4242.",
    "Alice's passport number is on file for the hut booking.",
    "Alice is negotiating a salary raise to 85,000 euros at work.",
]
ALICE_HOME = "Alice lives in Lyon."
ALICE_MOVED = "Alice moved to Berlin in March and lives in Kreuzberg now."
_BOB = [
    "Bob is allergic to peanuts.",
    "Bob drinks two espressos every morning.",
    "Bob supports Olympique Lyonnais and never misses a home game.",
    "Bob is looking for a second-hand road bike.",
    "Bob's daughter starts school in September.",
    "Bob asked for a sourdough bread recipe.",
]


def episodes() -> list[dict[str, Any]]:
    """Keyword arguments of ``HierarchicalMemory.add`` for every episode, in conversation
    order: a session per topic."""
    items: list[dict[str, Any]] = []
    for session, texts, category in (
        ("trip", _ALICE_TRAVEL, "event"),
        ("food", _ALICE_FOOD, "preference"),
        ("work", _ALICE_WORK, "context"),
    ):
        items += [
            {"content": t, "user_id": "alice", "session_id": session, "category": category,
             "zone": "internal", "importance": 0.6}
            for t in texts
        ]  # fmt: skip
    items += [
        {"content": t, "user_id": "alice", "session_id": "private", "category": "fact",
         "zone": "confidential", "importance": 0.9}
        for t in ALICE_CONFIDENTIAL
    ]  # fmt: skip
    items += [
        {"content": t, "user_id": "bob", "session_id": "chat", "category": "fact",
         "zone": "internal", "importance": 0.5}
        for t in _BOB
    ]  # fmt: skip
    return items


def home_fact() -> dict[str, Any]:
    """Alice's home town: a user-level fact (no session), soon superseded."""
    return {"content": ALICE_HOME, "user_id": "alice", "category": "fact", "zone": "internal",
            "importance": 0.8}  # fmt: skip


#: Counts the checks rely on.
ALICE_INTERNAL = len(_ALICE_TRAVEL) + len(_ALICE_FOOD) + len(_ALICE_WORK)
BOB_EPISODES = len(_BOB)
