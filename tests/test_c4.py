"""C4's rules, each on text that must pass and text that must fail, then composed."""

import hashlib

import pytest

from preprocessing import c4
from preprocessing.document import Document, Drop

SMALL_BAD_WORDS = frozenset({"darn", "heck no"})


def _doc(text):
  return Document(id="p", source="c4", text=text, metadata={"url": "http://x/"})


@pytest.mark.parametrize("line, cleaned", [
    ("The sea.[1]", "The sea."),
    ("The sea[12] is deep.[citation needed]", "The sea is deep."),
    ("History[edit]", "History"),
    ("Empty mark[] here.", "Empty mark here."),
    ("C4 matches case: [Edit] and [Citation Needed] stay.",
     "C4 matches case: [Edit] and [Citation Needed] stay."),
    ("Not a citation: [a1] stays.", "Not a citation: [a1] stays."),
])
def test_remove_citations(line, cleaned):
  assert c4.remove_citations(line) == cleaned


@pytest.mark.parametrize("line, fails", [
    ("Ends with a period.", False),
    ("Ends with a question?", False),
    ("Ends with a bang!", False),
    ('Ends with a quote "like this"', False),
    ('Ends with a period in quotes."', False),
    ("Ends with an ellipsis...", True),
    ("Ends with nothing", True),
    ("Ends with a colon:", True),
    ("Ends with a closing bracket.)", True),
])
def test_terminal_punctuation(line, fails):
  assert c4.lacks_terminal_punctuation(line) is fails


def test_words_per_line():
  assert not c4.has_too_few_words("This line has exactly five.")
  assert c4.has_too_few_words("Only four words here.")
  assert c4.has_too_few_words("Spaces   do   not   count.")


def test_word_length():
  assert not c4.has_too_long_word("x" * 1000 + " ok.")
  assert c4.has_too_long_word("ok " + "x" * 1001 + ".")


@pytest.mark.parametrize("line, javascript, policy", [
    ("Please enable JavaScript to view this page.", True, False),
    ("Read our Privacy Policy before you continue.", False, True),
    ("See the TERMS OF USE for details.", False, True),
    ("Our cookie policy explains everything.", False, True),
    ("This website uses cookies to improve things.", False, True),
    ("We explain our use of cookies below.", False, True),
    ("We use cookies on this site.", False, True),
    ("The cookie jar on the shelf was empty.", False, False),
    ("Java is an island of Indonesia.", False, False),
])
def test_javascript_and_policy(line, javascript, policy):
  assert c4.mentions_javascript(line) is javascript
  assert c4.has_policy_phrase(line) is policy


def test_page_markers():
  assert c4.has_lorem_ipsum("Some text. LOREM IPSUM dolor sit amet.")
  assert not c4.has_lorem_ipsum("Lorem is a name; ipsum is Latin.")
  assert c4.has_curly_brace("var page = {title: 1}.")
  assert not c4.has_curly_brace("Round (and square [brackets]) are fine.")


THREE_SENTENCES = "The first one is here. The second follows it!\nIs this the third?"


def test_sentences():
  assert c4.count_sentences(THREE_SENTENCES) == 3
  assert c4.count_sentences('He said "stop." Then he left. Version 2.5 is out.') == 3
  assert c4.count_sentences('A line ending in a quote "counts once"\nSo does this.') == 2
  assert c4.min_sentences(_doc(THREE_SENTENCES)).text == THREE_SENTENCES
  assert c4.min_sentences(_doc("One sentence only. And a second.")) == Drop("too_few_sentences")
  assert c4.min_sentences(_doc("")) == Drop("too_few_sentences")


def test_clean_lines_applies_the_rules_in_order_and_counts_removals():
  doc = c4.clean_lines(_doc(
      "Home | About | Contact\n"
      "  The river flows north into the sea.[1]  \n"
      "Please enable javascript: var menu = {open: true}.\n"
      "\n"
      "It was named after a local family.[citation needed]\n"
      "Too short a line.\n"
      "We use cookies to count visitors to this site.\n"
      "The bridge was built in the last century. [2]\n"
      + "x" * 1001 + " was here.\n"
      "Read more..."))
  assert doc.text == ("The river flows north into the sea.\n"
                      "It was named after a local family.")
  assert doc.metadata == {"url": "http://x/", "c4_lines_removed": {
      "no_terminal_punctuation": 3, "javascript": 1, "too_few_words": 1, "policy": 1,
      "word_too_long": 1}}


def test_page_rules_see_only_lines_that_survive_the_earlier_line_rules():
  body = "The first sentence is here.\nThe second sentence is here.\n"
  assert c4.clean_lines(_doc(body + "Lorem ipsum dolor sit amet, consectetur.")) == (
      Drop("lorem_ipsum"))
  assert c4.clean_lines(_doc(body + "function show() { return 1; }")).text == body.strip()
  assert c4.clean_lines(_doc(body + "The template uses { as a marker here.")) == (
      Drop("curly_brace"))
  # C4 removes a javascript line before it looks for "{" and a policy line after.
  assert c4.clean_lines(_doc(body + "Your javascript object is {a: 1} here.")).text == (
      body.strip())
  assert c4.clean_lines(_doc(body + "Our privacy policy is {in draft} now.")) == (
      Drop("curly_brace"))


def test_ldnoobw_list():
  bad = c4.load_bad_words(c4.DEFAULT_BAD_WORDS)
  assert len(bad) == 377 and {"2 girls 1 cup", "shit", "s&m"} <= bad
  assert c4.bad_words_filter(_doc("What a SHIT show."), bad) == Drop("bad_words")
  assert c4.bad_words_filter(_doc("It's 2 Girls 1 Cup again."), bad) == Drop("bad_words")
  assert c4.bad_words_filter(_doc("They met at s&m club."), bad) == Drop("bad_words")
  clean = _doc("Scunthorpe is a town; shitake is a misspelt mushroom; 2 girls had 1 cup.")
  assert c4.bad_words_filter(clean, bad) is clean


@pytest.mark.parametrize("text, bad", [
    ("darn", True),
    ("Oh, Darn! It broke.", True),
    ("He said heck no.", True),
    ("He said HECK\nNO.", False),  # phrases match with a single space, as in C4
    ("He said heck, no.", False),
    ("Darned socks are warm.", False),
    ("A darn_it variable.", False),
])
def test_bad_words_match_whole_words_and_phrases(text, bad):
  assert c4.has_bad_word(text, SMALL_BAD_WORDS) is bad


def test_load_bad_words_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="bad-words list .*nope.txt not found"):
    c4.load_bad_words(tmp_path / "nope.txt")
  (tmp_path / "empty.txt").write_text("\n  \n")
  with pytest.raises(ValueError, match="is empty"):
    c4.load_bad_words(tmp_path / "empty.txt")
  (tmp_path / "mine.txt").write_text("Darn\nheck no\n")
  assert c4.load_bad_words(tmp_path / "mine.txt") == SMALL_BAD_WORDS


ENGLISH = ("The committee met on Tuesday to discuss the new budget for the city schools, and the "
           "members agreed to publish the report next month.")


def test_english_filter():
  kept = c4.english_filter(_doc(ENGLISH))
  assert kept.metadata["language"] == "en" and kept.metadata["language_score"] >= 0.99
  assert kept.metadata["url"] == "http://x/"
  french = ("Le comité s'est réuni mardi pour discuter du nouveau budget des écoles de la "
            "ville, et les membres ont accepté de publier le rapport le mois prochain.")
  assert c4.english_filter(_doc(french)) == Drop("language_fr")
  mixed = "The quick brown fox. Der schnelle braune Fuchs springt."  # en at about 0.57
  assert c4.english_filter(_doc(mixed)) == Drop("language_low_confidence")
  assert c4.english_filter(_doc("12345 67890")) == Drop("language_undetected")


PAGE = """Skip to main content
Home | News | Sport | Contact
Search...
The old mill on the river was restored last year by volunteers from the town.[1]
Work began in the spring, when the roof was replaced and the wheel repaired.[citation needed]
Visitors can now watch flour being ground on the first Sunday of every month.
Is the mill open in winter? Only for school groups, by appointment.
You must enable JavaScript in your browser to see the map.
This site uses cookies to improve your experience.
Read our privacy policy and terms of use.
Share this:
Copyright 2019 Town Heritage Trust"""


def test_clean_page_on_a_page_with_boilerplate():
  doc = c4.clean_page(_doc(PAGE), SMALL_BAD_WORDS)
  assert doc.text == "\n".join(PAGE.splitlines()[3:7]).replace("[1]", "").replace(
      "[citation needed]", "")
  assert doc.metadata["c4_lines_removed"] == {
      "no_terminal_punctuation": 5, "javascript": 1, "policy": 2}
  assert doc.metadata["language"] == "en"
  assert c4.clean_page(_doc(PAGE + "\nThe miller said it was a darn good year."),
                       SMALL_BAD_WORDS) == Drop("bad_words")
  assert c4.clean_page(_doc(PAGE + "\nLorem ipsum dolor sit amet, consectetur."),
                       SMALL_BAD_WORDS) == Drop("lorem_ipsum")
  short = "\n".join(PAGE.splitlines()[:5])
  assert c4.clean_page(_doc(short), SMALL_BAD_WORDS) == Drop("too_few_sentences")


def test_line_dedup_key():
  assert c4.line_dedup_key("  Same Line. ") == hashlib.md5(b"same line.").hexdigest()
  assert c4.line_dedup_key("Same line.") == c4.line_dedup_key("SAME LINE.\t")
  assert c4.line_dedup_key("Same line.") != c4.line_dedup_key("Same line!")


def test_released_c4_records():
  doc = c4.c4_json_document('{"text": "Hi.", "url": "http://x/", "timestamp": "2019"}', "f:1")
  assert (doc.id, doc.text, doc.metadata["timestamp"]) == ("http://x/", "Hi.", "2019")
  with pytest.raises(ValueError, match="f:2: not a C4 record"):
    c4.c4_json_document('{"text": "no url"}', "f:2")
