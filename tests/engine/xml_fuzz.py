"""Hypothesis strategies shared by the XML codec tests: mutated real elements and random trees.

Each codec's test file supplies its own vocabulary (tags, attribute names, attribute values and texts)
and seed elements; the mutation operators and the tree shape are the same for both.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from hypothesis import strategies as st

__all__ = ["Vocabulary", "mutated", "random_tree"]

_OPERATIONS = ["tag", "attr", "del_attr", "text", "del", "dup", "add", "reverse"]


@dataclass(frozen=True)
class Vocabulary:
    """What mutations and random trees are made of."""

    tags: Sequence[str]
    attrs: Sequence[str]
    attr_values: st.SearchStrategy[Any]
    texts: st.SearchStrategy[Any]


def mutated(seeds: Callable[[], list[ET.Element]], words: Vocabulary) -> st.SearchStrategy[ET.Element]:
    """A copy of one of ``seeds()`` with 1 to 6 random edits (tags, attributes, texts, children)."""

    @st.composite
    def strategy(draw: st.DrawFn) -> ET.Element:
        root = copy.deepcopy(draw(st.sampled_from(seeds())))
        for _ in range(draw(st.integers(min_value=1, max_value=6))):
            node: Any = draw(st.sampled_from(list(root.iter())))
            operation = draw(st.sampled_from(_OPERATIONS))
            if operation == "tag":
                node.tag = draw(st.sampled_from(words.tags))
            elif operation == "attr":
                node.set(draw(st.sampled_from(words.attrs)), draw(words.attr_values))
            elif operation == "del_attr" and node.attrib:
                del node.attrib[draw(st.sampled_from(sorted(node.attrib)))]
            elif operation == "text":
                node.text = draw(words.texts)
            elif operation == "del" and len(node):
                del node[draw(st.integers(0, len(node) - 1))]
            elif operation == "dup" and len(node):
                node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
            elif operation == "add":
                child = ET.SubElement(node, draw(st.sampled_from(words.tags)))
                child.text = draw(words.texts)
                if draw(st.booleans()):
                    child.set(draw(st.sampled_from(words.attrs)), draw(words.attr_values))
            elif operation == "reverse":
                node[:] = list(reversed(node))
        return root

    return strategy()


def random_tree(words: Vocabulary, depth: int = 3) -> st.SearchStrategy[ET.Element]:
    """A random element tree of at most ``depth`` levels built from ``words``."""

    @st.composite
    def tree(draw: st.DrawFn, level: int) -> ET.Element:
        node: Any = ET.Element(draw(st.sampled_from(words.tags)))
        for name in draw(st.lists(st.sampled_from(words.attrs), max_size=3, unique=True)):
            node.set(name, draw(words.attr_values))
        node.text = draw(words.texts)
        if level < depth:
            for _ in range(draw(st.integers(0, 3))):
                node.append(draw(tree(level + 1)))
        return cast(ET.Element, node)

    return tree(0)
