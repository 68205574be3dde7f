"""The toy world's vocabulary in four scripts: names, attribute values, sentence templates, question templates.

Names are built from consonant-vowel syllables that have a fixed spelling in each script — Latin for English,
Hangul for Korean, Han characters (phonetic loans) for Chinese and Katakana for Japanese — so an entity is the
same word in every language ("Kamiro" = 카미로 = 卡米罗 = カミロ) and its facts can be stated in all four.
"""

from __future__ import annotations

LANGS: tuple[str, ...] = ("en", "ko", "zh", "ja")

CONSONANTS = "kstnmrpbdgh"
VOWELS = "aiueo"

# Hangul: initial-consonant index (ㄱ=0 ... ㅎ=18) and vowel index (ㅏ=0 ... ㅣ=20) for syllable composition.
_HANGUL_L = {"k": 15, "s": 9, "t": 16, "n": 2, "m": 6, "r": 5, "p": 17, "b": 7, "d": 3, "g": 0, "h": 18}
_HANGUL_V = {"a": 0, "i": 20, "u": 13, "e": 5, "o": 8}

_KANA = {
    "k": "カキクケコ", "s": "サシスセソ", "t": "タチツテト", "n": "ナニヌネノ", "m": "マミムメモ",
    "r": "ラリルレロ", "p": "パピプペポ", "b": "バビブベボ", "d": "ダヂヅデド", "g": "ガギグゲゴ",
    "h": "ハヒフヘホ",
}
_HAN = {
    "k": "卡基库克科", "s": "萨西苏塞索", "t": "塔提图特托", "n": "纳尼努内诺", "m": "玛弥穆梅莫",
    "r": "拉里鲁雷罗", "p": "帕皮普佩波", "b": "巴比布贝博", "d": "达迪杜德多", "g": "加吉古格戈",
    "h": "哈希胡赫霍",
}


def syllable(c: str, v: str, lang: str) -> str:
    """One consonant-vowel syllable spelled in ``lang``'s script."""
    vi = VOWELS.index(v)
    if lang == "en":
        return c + v
    if lang == "ko":
        return chr(0xAC00 + (_HANGUL_L[c] * 21 + _HANGUL_V[v]) * 28)
    if lang == "zh":
        return _HAN[c][vi]
    if lang == "ja":
        return _KANA[c][vi]
    raise ValueError(f"unknown language {lang!r}")


def spell(syllables: list[tuple[str, str]], lang: str) -> str:
    """A name from its syllables; English names are capitalised."""
    word = "".join(syllable(c, v, lang) for c, v in syllables)
    return word.capitalize() if lang == "en" else word


# Attribute values: value key -> {lang: word}.
VALUES: dict[str, dict[str, dict[str, str]]] = {
    "job": {
        "baker": {"en": "baker", "ko": "제빵사", "zh": "面包师", "ja": "パン職人"},
        "teacher": {"en": "teacher", "ko": "교사", "zh": "老师", "ja": "教師"},
        "doctor": {"en": "doctor", "ko": "의사", "zh": "医生", "ja": "医者"},
        "farmer": {"en": "farmer", "ko": "농부", "zh": "农民", "ja": "農家"},
        "painter": {"en": "painter", "ko": "화가", "zh": "画家", "ja": "画家"},
        "singer": {"en": "singer", "ko": "가수", "zh": "歌手", "ja": "歌手"},
        "fisher": {"en": "fisher", "ko": "어부", "zh": "渔夫", "ja": "漁師"},
        "carpenter": {"en": "carpenter", "ko": "목수", "zh": "木匠", "ja": "大工"},
    },
    "pet": {
        "cat": {"en": "cat", "ko": "고양이", "zh": "猫", "ja": "猫"},
        "dog": {"en": "dog", "ko": "개", "zh": "狗", "ja": "犬"},
        "rabbit": {"en": "rabbit", "ko": "토끼", "zh": "兔子", "ja": "うさぎ"},
        "parrot": {"en": "parrot", "ko": "앵무새", "zh": "鹦鹉", "ja": "オウム"},
        "turtle": {"en": "turtle", "ko": "거북", "zh": "乌龟", "ja": "カメ"},
        "horse": {"en": "horse", "ko": "말", "zh": "马", "ja": "馬"},
        "goat": {"en": "goat", "ko": "염소", "zh": "山羊", "ja": "ヤギ"},
        "hen": {"en": "hen", "ko": "암탉", "zh": "母鸡", "ja": "めんどり"},
    },
    "color": {
        "red": {"en": "red", "ko": "빨간색", "zh": "红色", "ja": "赤"},
        "blue": {"en": "blue", "ko": "파란색", "zh": "蓝色", "ja": "青"},
        "green": {"en": "green", "ko": "초록색", "zh": "绿色", "ja": "緑"},
        "yellow": {"en": "yellow", "ko": "노란색", "zh": "黄色", "ja": "黄色"},
        "white": {"en": "white", "ko": "흰색", "zh": "白色", "ja": "白"},
        "black": {"en": "black", "ko": "검은색", "zh": "黑色", "ja": "黒"},
        "purple": {"en": "purple", "ko": "보라색", "zh": "紫色", "ja": "紫"},
        "orange": {"en": "orange", "ko": "주황색", "zh": "橙色", "ja": "オレンジ色"},
    },
    "food": {
        "apples": {"en": "apples", "ko": "사과", "zh": "苹果", "ja": "りんご"},
        "bread": {"en": "bread", "ko": "빵", "zh": "面包", "ja": "パン"},
        "rice": {"en": "rice", "ko": "밥", "zh": "米饭", "ja": "ご飯"},
        "noodles": {"en": "noodles", "ko": "국수", "zh": "面条", "ja": "麺"},
        "fish": {"en": "fish", "ko": "생선", "zh": "鱼", "ja": "魚"},
        "cheese": {"en": "cheese", "ko": "치즈", "zh": "奶酪", "ja": "チーズ"},
        "soup": {"en": "soup", "ko": "수프", "zh": "汤", "ja": "スープ"},
        "cake": {"en": "cake", "ko": "케이크", "zh": "蛋糕", "ja": "ケーキ"},
    },
    "region": {
        "north": {"en": "north", "ko": "북쪽", "zh": "北部", "ja": "北部"},
        "south": {"en": "south", "ko": "남쪽", "zh": "南部", "ja": "南部"},
        "east": {"en": "east", "ko": "동쪽", "zh": "东部", "ja": "東部"},
        "west": {"en": "west", "ko": "서쪽", "zh": "西部", "ja": "西部"},
    },
}

# Which relations each entity kind has, and what kind of object each relation takes.
PERSON_RELATIONS: tuple[str, ...] = ("city", "job", "pet", "color", "food", "age", "friend")
CITY_RELATIONS: tuple[str, ...] = ("region", "famous", "founded")
OBJECT_KIND = {
    "city": "city", "friend": "person", "job": "job", "pet": "pet", "color": "color", "food": "food",
    "age": "number", "region": "region", "famous": "food", "founded": "number",
}


def has_batchim(word: str) -> bool:
    """Whether a Korean word ends in a final consonant (digits read as Sino-Korean numerals)."""
    if not word:
        return False
    ch = word[-1]
    if ch.isdigit():
        return ch in "013678"  # 영 일 삼 육 칠 팔 end in a consonant
    code = ord(ch) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


def _ends_in_rieul(word: str) -> bool:
    code = ord(word[-1]) - 0xAC00
    return 0 <= code < 11172 and code % 28 == 8


def ko_particle(word: str, pair: str) -> str:
    """``word`` followed by the right form of a Korean particle pair such as "은/는", "이/가", "을/를"."""
    with_c, without_c = pair.split("/")
    return word + (with_c if has_batchim(word) else without_c)


# Statement templates (passages): relation -> lang -> variants. {s} subject, {o} object; Korean variants use
# {s_topic} (은/는), {s_subj} (이/가), {o_obj} (을/를) and {o_cop} (이다/다) forms filled by the renderer.
STATEMENTS: dict[str, dict[str, list[str]]] = {
    "city": {
        "en": ["{s} lives in {o}.", "{s} makes a home in the town of {o}.", "The home of {s} is {o}."],
        "ko": ["{s_topic} {o}에 산다.", "{s_topic} {o}라는 마을에서 지낸다.", "{s}의 집은 {o}에 있다."],
        "zh": ["{s}住在{o}。", "{s}的家在{o}城。", "{s}生活在{o}。"],
        "ja": ["{s}は{o}に住んでいる。", "{s}の家は{o}にある。", "{s}は{o}の町で暮らしている。"],
    },
    "job": {
        "en": ["{s} works as a {o}.", "{s} is a {o} by trade.", "By profession, {s} is a {o}."],
        "ko": ["{s}의 직업은 {o}이다.", "{s_topic} {o_ro} 일한다.", "{s_topic} {o}이다."],
        "zh": ["{s}是一名{o}。", "{s}的职业是{o}。", "{s}当{o}。"],
        "ja": ["{s}の仕事は{o}だ。", "{s}は{o}として働いている。", "{s}は{o}だ。"],
    },
    "pet": {
        "en": ["{s} has a pet {o}.", "{s} keeps a {o} at home.", "The pet of {s} is a {o}."],
        "ko": ["{s_topic} {o_obj} 기른다.", "{s}의 반려동물은 {o}이다.", "{s_topic} 집에서 {o_obj} 키운다."],
        "zh": ["{s}养了一只{o}。", "{s}的宠物是{o}。", "{s}家里有一只{o}。"],
        "ja": ["{s}は{o}を飼っている。", "{s}のペットは{o}だ。", "{s}の家には{o}がいる。"],
    },
    "color": {
        "en": ["The favourite colour of {s} is {o}.", "{s} likes the colour {o} best.", "{s} loves {o}."],
        "ko": ["{s}{poss} 좋아하는 색은 {o}이다.", "{s_topic} {o_obj} 가장 좋아한다.", "{s}의 색은 {o}이다."],
        "zh": ["{s}最喜欢的颜色是{o}。", "{s}最爱{o}。", "{s}喜欢{o}。"],
        "ja": ["{s}の好きな色は{o}だ。", "{s}は{o}が一番好きだ。", "{s}は{o}を愛している。"],
    },
    "food": {
        "en": ["{s} likes to eat {o}.", "The favourite food of {s} is {o}.", "{s} enjoys {o}."],
        "ko": ["{s_topic} {o_obj} 즐겨 먹는다.", "{s}{poss} 좋아하는 음식은 {o}이다.", "{s_topic} {o_obj} 좋아한다."],
        "zh": ["{s}喜欢吃{o}。", "{s}最喜欢的食物是{o}。", "{s}爱吃{o}。"],
        "ja": ["{s}は{o}を食べるのが好きだ。", "{s}の好きな食べ物は{o}だ。", "{s}は{o}が好きだ。"],
    },
    "age": {
        "en": ["{s} is {o} years old.", "{s} has lived for {o} years.", "The age of {s} is {o}."],
        "ko": ["{s_topic} {o}살이다.", "{s}의 나이는 {o}살이다.", "{s_topic} 올해 {o}살이다."],
        "zh": ["{s}今年{o}岁。", "{s}的年龄是{o}岁。", "{s}已经{o}岁了。"],
        "ja": ["{s}は{o}歳だ。", "{s}の年齢は{o}歳だ。", "{s}は今年{o}歳になる。"],
    },
    "friend": {
        "en": ["The best friend of {s} is {o}.", "{s} is good friends with {o}.", "{s} often visits {o}."],
        "ko": ["{s}의 가장 친한 친구는 {o}이다.", "{s_topic} {o}와 친하다.", "{s_topic} 자주 {o_obj} 찾아간다."],
        "zh": ["{s}最好的朋友是{o}。", "{s}和{o}是好朋友。", "{s}经常去看{o}。"],
        "ja": ["{s}の親友は{o}だ。", "{s}は{o}と仲が良い。", "{s}はよく{o}を訪ねる。"],
    },
    "region": {
        "en": ["{s} lies in the {o} of the land.", "The town of {s} is in the {o}.", "{s} is a town in the {o}."],
        "ko": ["{s_topic} 이 나라의 {o}에 있다.", "{s} 마을은 {o}에 있다.", "{s_topic} {o}의 마을이다."],
        "zh": ["{s}位于这片土地的{o}。", "{s}城在{o}。", "{s}是{o}的一个城镇。"],
        "ja": ["{s}はこの国の{o}にある。", "{s}の町は{o}にある。", "{s}は{o}の町だ。"],
    },
    "famous": {
        "en": ["{s} is famous for its {o}.", "People visit {s} for the {o}.", "The {o} of {s} is well known."],
        "ko": ["{s_topic} {o_ro} 유명하다.", "사람들은 {o} 때문에 {s_obj} 찾는다.", "{s}의 {o_topic} 잘 알려져 있다."],
        "zh": ["{s}以{o}闻名。", "人们为了{o}去{s}。", "{s}的{o}很有名。"],
        "ja": ["{s}は{o}で有名だ。", "人々は{o}を求めて{s}を訪れる。", "{s}の{o}はよく知られている。"],
    },
    "founded": {
        "en": ["{s} was founded in the year {o}.", "The town of {s} dates from {o}.", "{s} was built in {o}."],
        "ko": ["{s_topic} {o}년에 세워졌다.", "{s} 마을은 {o}년에 생겼다.", "{s_topic} {o}년에 지어졌다."],
        "zh": ["{s}建于{o}年。", "{s}城始于{o}年。", "{s}在{o}年建成。"],
        "ja": ["{s}は{o}年に作られた。", "{s}の町は{o}年にできた。", "{s}は{o}年に建てられた。"],
    },
}

# Entity introductions that open a passage.
INTRO = {
    "person": {
        "en": ["{s} is a person of the land.", "This is an account of {s}.", "{s} is someone many people know."],
        "ko": ["{s_topic} 이 나라의 사람이다.", "이것은 {s}에 대한 이야기이다.", "{s_topic} 많은 사람이 아는 인물이다."],
        "zh": ["{s}是这片土地上的人。", "这是关于{s}的记载。", "{s}是很多人都认识的人。"],
        "ja": ["{s}はこの国の人だ。", "これは{s}についての記録だ。", "{s}は多くの人が知っている人物だ。"],
    },
    "city": {
        "en": ["{s} is a town of the land.", "This is an account of the town {s}.", "{s} is an old town."],
        "ko": ["{s_topic} 이 나라의 마을이다.", "이것은 {s} 마을에 대한 이야기이다.", "{s_topic} 오래된 마을이다."],
        "zh": ["{s}是这片土地上的一个城镇。", "这是关于{s}城的记载。", "{s}是一座古老的城镇。"],
        "ja": ["{s}はこの国の町だ。", "これは{s}という町の記録だ。", "{s}は古い町だ。"],
    },
}

# English questions (toy H6); the answer is the object word.
QUESTIONS_EN: dict[str, list[str]] = {
    "city": ["Where does {s} live?", "In which town is the home of {s}?"],
    "job": ["What is the job of {s}?", "What does {s} do for work?"],
    "pet": ["What pet does {s} have?", "Which animal does {s} keep at home?"],
    "color": ["What is the favourite colour of {s}?", "Which colour does {s} like best?"],
    "food": ["What food does {s} like?", "What does {s} like to eat?"],
    "age": ["How old is {s}?", "What is the age of {s}?"],
    "friend": ["Who is the best friend of {s}?", "Who is {s} good friends with?"],
    "region": ["In which part of the land is {s}?", "Where does the town of {s} lie?"],
    "famous": ["What is {s} famous for?", "Why do people visit {s}?"],
    "founded": ["When was {s} founded?", "In which year was {s} built?"],
}

# Korean questions (toy KoMMLU).
QUESTIONS_KO: dict[str, list[str]] = {
    "city": ["{s_topic} 어디에 사는가?", "{s}의 집은 어느 마을에 있는가?"],
    "job": ["{s}의 직업은 무엇인가?", "{s_topic} 무슨 일을 하는가?"],
    "pet": ["{s_topic} 어떤 동물을 기르는가?", "{s}의 반려동물은 무엇인가?"],
    "color": ["{s}{poss} 좋아하는 색은 무엇인가?", "{s_topic} 어떤 색을 가장 좋아하는가?"],
    "food": ["{s}{poss} 좋아하는 음식은 무엇인가?", "{s_topic} 무엇을 즐겨 먹는가?"],
    "age": ["{s_topic} 몇 살인가?", "{s}의 나이는 얼마인가?"],
    "friend": ["{s}의 가장 친한 친구는 누구인가?", "{s_topic} 누구와 친한가?"],
    "region": ["{s_topic} 이 나라의 어디에 있는가?", "{s} 마을은 어느 쪽에 있는가?"],
    "famous": ["{s_topic} 무엇으로 유명한가?", "사람들은 무엇 때문에 {s_obj} 찾는가?"],
    "founded": ["{s_topic} 몇 년에 세워졌는가?", "{s} 마을은 언제 생겼는가?"],
}


# Vocabulary questions (the "category" subject of toy MMLU/KoMMLU): which option is a word of this kind?
CATEGORY_QUESTIONS: dict[str, dict[str, str]] = {
    "city": {"en": "Which of these is a town?", "ko": "다음 중 마을의 이름은 무엇인가?"},
    "person": {"en": "Which of these is a person?", "ko": "다음 중 사람의 이름은 무엇인가?"},
    "job": {"en": "Which of these is a job?", "ko": "다음 중 직업은 무엇인가?"},
    "pet": {"en": "Which of these is an animal?", "ko": "다음 중 동물은 무엇인가?"},
    "color": {"en": "Which of these is a colour?", "ko": "다음 중 색깔은 무엇인가?"},
    "food": {"en": "Which of these is a food?", "ko": "다음 중 음식은 무엇인가?"},
    "region": {"en": "Which of these is a direction?", "ko": "다음 중 방향은 무엇인가?"},
}


def korean_forms(s: str, o: str) -> dict[str, str]:
    """Korean particle-attached forms of subject and object for the templates above."""
    return {
        "s_topic": ko_particle(s, "은/는"),
        "s_subj": ko_particle(s, "이/가"),
        "s_obj": ko_particle(s, "을/를"),
        "o_obj": ko_particle(o, "을/를"),
        "o_topic": ko_particle(o, "은/는"),
        "o_ro": o + ("으로" if has_batchim(o) and not _ends_in_rieul(o) else "로"),
        "poss": "이" if has_batchim(s) else "가",
    }
