"""C4's rules, each on text that must pass and text that must fail."""

import pytest

from preprocessing import c4
from preprocessing.document import Document, Drop


def _doc(text):
  return Document(id="p", source="c4", text=text)


@pytest.mark.parametrize("line, reason", [
    ("This line has exactly five words.", None),
    ("Only four words here.", "too_few_words"),
    ("Five words but no period", "no_terminal_punctuation"),
    ("This one trails off with dots...", "no_terminal_punctuation"),
    ('He said it ends with a "quote."', None),
    ("Does a question mark count here?", None),
    ("Enable JavaScript to view this page.", "javascript"),
    ("Read our Privacy Policy before you continue.", "policy"),
    ("This website uses cookies to improve things.", "policy"),
    ("x" * 1000 + " a b c d.", None),
    ("x" * 1001 + " a b c d.", "word_too_long"),
])
def test_line_rules(line, reason):
  assert c4.line_rule(line) == reason


def test_clean_lines_strips_citations_and_counts_removals():
  doc = c4.clean_lines(_doc(
      "The river flows north into the sea.[1]\n"
      "Home | About | Contact\n"
      "It was named after a local family.[citation needed]\n"
      "Please enable javascript to read this page.\n"
      "  \n"
      "The bridge was built in the last century.[edit]"))
  assert doc.text == ("The river flows north into the sea.\n"
                      "It was named after a local family.\n"
                      "The bridge was built in the last century.")
  assert doc.metadata["c4_lines_removed"] == {"no_terminal_punctuation": 1, "javascript": 1}
  assert c4.clean_lines(_doc("Menu\nLogin")) == Drop("no_lines_left")


THREE_SENTENCES = ("The first sentence is here. The second sentence follows it!\n"
                   "Is this the third sentence?")


def test_page_rules():
  assert c4.page_rules(_doc(THREE_SENTENCES)).text == THREE_SENTENCES
  assert c4.page_rules(_doc("One sentence only. And a second one.")) == Drop("too_few_sentences")
  assert c4.page_rules(_doc(THREE_SENTENCES + "\nLorem ipsum dolor sit amet.")) == (
      Drop("lorem_ipsum"))
  assert c4.page_rules(_doc(THREE_SENTENCES + "\nvar x = {a: 1}.")) == Drop("curly_brace")
  assert c4.count_sentences('He said "stop." Then he left. Version 2.5 is out.') == 3


def test_bad_words_match_whole_words_and_phrases():
  bad = c4.load_bad_words(c4.DEFAULT_BAD_WORDS)
  assert len(bad) == 377
  assert c4.bad_words_filter(_doc("A classic shit show."), bad) == Drop("bad_words")
  assert c4.bad_words_filter(_doc("Two girls, 2 GIRLS 1 CUP!"), bad) == Drop("bad_words")
  assert c4.bad_words_filter(_doc("Never search for goatse."), bad) == Drop("bad_words")
  assert c4.bad_words_filter(_doc("A rude gesture: \U0001f595!"), bad) == Drop("bad_words")
  clean = _doc("Scunthorpe is a town; the shitake joke is about mushrooms.")
  assert c4.bad_words_filter(clean, bad) is clean
  with pytest.raises(FileNotFoundError, match="bad-words list .*nope.txt not found"):
    c4.load_bad_words("nope.txt")


def test_english_filter():
  english = _doc("The committee met on Tuesday to discuss the new budget for the city "
                 "schools, and the members agreed to publish the report next month.")
  kept = c4.english_filter(english)
  assert kept is english and kept.metadata["language"] == "en"
  assert kept.metadata["language_score"] >= 0.99
  french = _doc("Le comité s'est réuni mardi pour discuter du nouveau budget des écoles de la "
                "ville, et les membres ont accepté de publier le rapport le mois prochain.")
  assert c4.english_filter(french) == Drop("language_fr")
  assert c4.english_filter(_doc("12345 67890")) == Drop("language_undetected")


def test_dedup_key_and_released_c4_records():
  assert c4.line_dedup_key("  Same Line. ") == c4.line_dedup_key("same line.")
  doc = c4.c4_json_document('{"text": "Hi.", "url": "http://x/", "timestamp": "2019"}', "f:1")
  assert (doc.id, doc.text, doc.metadata["timestamp"]) == ("http://x/", "Hi.", "2019")
  with pytest.raises(ValueError, match="f:2: not a C4 record"):
    c4.c4_json_document('{"text": "no url"}', "f:2")
