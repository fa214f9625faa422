"""The embedded sample: a small corpus and three labelled sets that the project writes itself.

Everything is generated from templates, word lists and real names (people, places,
organisations: facts, not copied text) with a fixed seed, so the files are identical on every
machine (a cluster node that needs them regenerates them locally). The sample is sized so that
a demo model learns in minutes on a laptop and answers a newcomer's first sentences: ordinary
review phrases (negation and contrast included), news headlines, and sentences with real names
in varied contexts. The corpus shares its vocabulary with the labelled sets, so pretraining
helps the downstream tasks.

Paths written as `sample://<relative path>` in configs resolve to this sample.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from lmplatform.config import atomic_write_text

VERSION = "v5"


def _words(text: str, sep: str | None = None) -> list[str]:
    """The words of a list, without repeats, in order (a repeat would be drawn twice as often)."""
    return list(dict.fromkeys(text.split(sep)))


# Real first and last names, places and organisations (facts, not copied text), so that a demo
# model meets the kind of names a newcomer types; templates vary the context around them.
_FIRST = (
    "John Mary James Anna David Maria Michael Sarah Robert Laura Peter Emma Thomas Julia Daniel "
    "Sofia Carlos Elena Ahmed Fatima Wei Mei Hiroshi Yuki Raj Priya Olga Ivan Pierre Claire Hans "
    "Angela Tony Barack Vladimir Emmanuel Kofi Amara Lucas Isabel Marco Giulia Jan Eva Omar Leila "
    "Kenji Sven Ingrid Paul George Helen Mark Susan Steve Linda Kevin Nancy Jose Ana Boris Nicola "
    # v4: a wider inventory from many languages, so that a name the model never saw in
    # fine-tuning still looks like the names it did see
    "Alice Andrew Brian Catherine Charles Christopher Deborah Edward Elizabeth Frank Gary Grace "
    "Henry Jack Jennifer Jessica Karen Katherine Lisa Margaret Matthew Nathan Oliver Patricia "
    "Rachel Rebecca Richard Ryan Samuel Simon Stephen Victoria William Zoe Abdul Aisha Alejandro "
    "Aleksandr Amir Anders Antonio Astrid Beatriz Bjorn Chiara Chloe Dmitri Diego Eduardo Erik "
    "Farid Francesca Gabriel Hamid Hannah Ibrahim Ines Javier Jorge Katarzyna Klaus Lars Lena "
    "Luis Magnus Mateo Mohammed Nadia Natalia Nikolai Noor Pablo Pedro Rafael Rania Sergei "
    "Stefan Tariq Tomas Ursula Valentina Wolfgang Yusuf Zainab Akira Haruto Min-jun Ji-woo "
    "Arjun Ananya Vikram Deepa Xin Jun Ling Hao Chidi Ngozi Kwame Abebe Thabo Zanele Sipho "
    "Mariam Youssef Leon Felix Maximilian Sophie Camille Louis Hugo Manon Elif Mehmet Ayse"
).split()
_LAST = _words(
    "Smith Johnson Brown Garcia Miller Davis Wilson Taylor Clark Lewis Walker Young King Wright "
    "Lopez Hill Scott Green Adams Baker Chen Wang Li Zhang Tanaka Sato Kim Park Singh Patel Kumar "
    "Khan Ali Hassan Ivanov Petrov Muller Schmidt Fischer Weber Merkel Dubois Martin Bernard Rossi "
    "Bianchi Silva Santos Costa Fernandez Novak Jansen Andersson Nielsen Okafor Mensah Blair Obama "
    "Putin Macron Johnson Sturgeon "
    "Anderson Thomas Jackson White Harris Martinez Robinson Rodriguez Thompson Moore Allen "
    "Hernandez Nelson Carter Mitchell Perez Roberts Turner Phillips Campbell Parker Evans "
    "Edwards Collins Stewart Morris Murphy Cook Rogers Morgan Cooper Peterson Reed Bailey Bell "
    "Gomez Kelly Howard Cox Diaz Richardson Watson Bennett Hughes "
    "Sanders Myers Ross Foster Kowalski Nowak Wojcik Horvath Nagy Popescu Papadopoulos "
    "Yilmaz Kaya Demir Haddad Nasser Rahman Hussain Chaudhry Gupta Sharma Reddy Iyer Nair "
    "Nguyen Tran Pham Liu Huang Zhao Wu Zhou Suzuki Takahashi Watanabe Yamamoto Nakamura Choi "
    "Jung Lee Oliveira Pereira Alves Ribeiro Rocha Gonzalez Ramirez Torres Flores Morales "
    "Castillo Romero Moreno Navarro Esposito Romano Colombo Ricci Bruno Lefebvre Moreau "
    "Laurent Girard Fontaine Becker Hoffmann Schulz Koch Richter Wagner Neumann Bauer Larsen "
    "Hansen Johansson Karlsson Lindqvist Virtanen Korhonen Janssens Peeters Visser Smit "
    "Adeyemi Okonkwo Banda Mwangi Otieno Dlamini Nkosi Abubakar Mahmoud Farouk Petrova Volkov "
    "Sokolov Kuznetsov Popov Morozov Shevchenko Bondarenko Novotny Svoboda Dvorak"
)
_CITIES = [
    *"London Paris Berlin Madrid Rome Moscow Tokyo Beijing Shanghai Delhi Mumbai Cairo Lagos "
    "Nairobi Sydney Toronto Chicago Boston Washington Seattle Houston Miami Dallas Atlanta Denver "
    "Vienna Prague Warsaw Stockholm Oslo Dublin Lisbon Athens Istanbul Dubai Singapore Seoul "
    "Bangkok Jakarta Manila Lima Brussels Amsterdam Geneva Zurich Frankfurt Munich Milan "
    "Barcelona Jerusalem Baghdad Kabul Tehran Glasgow Manchester Liverpool Osaka".split(),
    *"Edinburgh Cardiff Belfast Leeds Birmingham Bristol Oxford Cambridge Lyon Marseille "
    "Toulouse Bordeaux Hamburg Cologne Stuttgart Leipzig Dresden Naples Turin Venice Florence "
    "Valencia Seville Bilbao Porto Krakow Gdansk Budapest Bucharest Belgrade Zagreb Kyiv "
    "Minsk Riga Vilnius Tallinn Helsinki Copenhagen Rotterdam Antwerp Ankara Beirut "
    "Damascus Amman Riyadh Doha Karachi Lahore Islamabad Dhaka Kolkata Chennai Bangalore "
    "Kathmandu Hanoi Taipei Kyoto Nagoya Busan Perth Melbourne Brisbane Auckland Wellington "
    "Vancouver Montreal Ottawa Calgary Philadelphia Phoenix Detroit Baltimore Pittsburgh "
    "Nashville Orlando Portland Minneapolis Cleveland Havana Bogota Caracas Santiago Quito "
    "Montevideo Accra Dakar Khartoum Kampala Kinshasa Harare Johannesburg Durban "
    "Casablanca Algiers Tunis Tripoli".split(),
    "New York",
    "Los Angeles",
    "San Francisco",
    "Hong Kong",
    "Mexico City",
    "Buenos Aires",
    "Addis Ababa",
    "Cape Town",
    "Rio de Janeiro",
    "Tel Aviv",
    "Kuala Lumpur",
    "St Petersburg",
]
_COUNTRIES = [
    *"France Germany Italy Spain Britain Russia China Japan India Brazil Canada Mexico Egypt "
    "Nigeria Kenya Australia Iraq Iran Israel Pakistan Turkey Poland Sweden Norway Ireland Greece "
    "Argentina Chile Peru Korea Vietnam Thailand Indonesia Ukraine Texas California Florida Ohio "
    "Europe Asia Africa Scotland "
    "Portugal Belgium Netherlands Switzerland Austria Denmark Finland Hungary Romania Bulgaria "
    "Serbia Croatia Czechia Slovakia Lithuania Latvia Estonia Belarus Georgia Armenia Syria "
    "Lebanon Jordan Yemen Oman Qatar Kuwait Afghanistan Bangladesh Nepal Myanmar Cambodia "
    "Malaysia Philippines Singapore Taiwan Mongolia Kazakhstan Uzbekistan Colombia Venezuela "
    "Ecuador Bolivia Uruguay Paraguay Cuba Jamaica Haiti Morocco Algeria Tunisia Libya Sudan "
    "Ethiopia Somalia Uganda Tanzania Rwanda Ghana Senegal Cameroon Angola Zambia Zimbabwe "
    "Mozambique Namibia Botswana Madagascar Iceland Wales England Bavaria Siberia Kashmir "
    "Gaza Crimea Catalonia Quebec Ontario Alaska Virginia Arizona Nevada Michigan".split(),
    "New Zealand",
    "Saudi Arabia",
    "North Korea",
    "Sri Lanka",
    "Costa Rica",
    "Ivory Coast",
    "Latin America",
    "Middle East",
    "South Africa",
    "United States",
]
_ORGS = [
    *"Reuters Google Microsoft Apple Amazon IBM Intel Toyota Honda Ford Siemens Nokia Samsung "
    "Sony Boeing Airbus Shell BP Exxon Pfizer Nestle Unilever Volkswagen BMW Fiat Renault "
    "Citigroup Barclays HSBC Walmart Disney Netflix Oracle Yahoo NASA NATO FIFA BBC CNN Chelsea "
    "Arsenal Juventus Interpol UNICEF "
    "Adidas Nike Puma Ikea Lego Zara Carrefour Tesco Aldi Lidl Danone Heineken Carlsberg "
    "Ericsson Philips Bosch Bayer BASF Novartis Roche AstraZeneca Sanofi Merck Moderna Nissan "
    "Hyundai Kia Peugeot Volvo Porsche Ferrari Tesla Uber Airbnb Spotify Twitter Facebook Meta "
    "Instagram YouTube TikTok Alibaba Tencent Baidu Huawei Xiaomi Lenovo Infosys Tata Reliance "
    "Gazprom Rosneft Aeroflot Lufthansa Ryanair easyJet Qantas Emirates KLM Chevron "
    "Petrobras Glencore ArcelorMittal Nvidia AMD Qualcomm Cisco Dell HP Adobe "
    "Salesforce PayPal Visa Mastercard JPMorgan Citibank UBS Santander Allianz AXA "
    "Starbucks McDonald's Coca-Cola PepsiCo Kellogg Nintendo Panasonic Canon Hitachi Toshiba "
    "Fujitsu Bloomberg NHK Greenpeace Amnesty Oxfam WHO UNESCO OPEC IMF WTO "
    "Europol Hamas Hezbollah Taliban Kremlin Pentagon Bundesbank Bayern "
    "Celtic Ajax Benfica Napoli Lakers Yankees Harvard Stanford MIT "
    "Yale Princeton Sorbonne Labour Conservatives Democrats Republicans".split(),
    "Goldman Sachs",
    "United Nations",
    "European Union",
    "World Bank",
    "Red Cross",
    "Manchester United",
    "Real Madrid",
    "Associated Press",
    "Federal Reserve",
    "General Motors",
    "Bank of England",
    "European Central Bank",
    "Deutsche Bank",
    "Morgan Stanley",
    "Bank of America",
    "Royal Dutch Shell",
    "British Airways",
    "Air France",
    "Wall Street Journal",
    "New York Times",
    "Financial Times",
    "Amnesty International",
    "World Health Organization",
    "International Monetary Fund",
    "Security Council",
    "Bayern Munich",
    "Paris Saint-Germain",
    "Inter Milan",
    "AC Milan",
    "Ajax Amsterdam",
    "New York Yankees",
    "Los Angeles Lakers",
    "Boston Red Sox",
    "Oxford University",
    "Harvard University",
    "University of Tokyo",
    "Labour Party",
    "Democratic Party",
    "Republican Party",
    "Social Democrats",
    "Microsoft Corp",
    "Sony Corp",
    "Toyota Motor",
    "Ford Motor",
    "Rio Tinto",
    "Al Jazeera",
    "FC Barcelona",
]
_NATIONAL = (
    "German French Italian Spanish British Russian Chinese Japanese American European Indian "
    "Brazilian Canadian Mexican Egyptian Australian Iraqi Israeli Turkish Polish Swedish Irish "
    "Dutch Belgian Swiss Austrian Danish Norwegian Finnish Greek Portuguese Hungarian Czech "
    "Romanian Ukrainian Serbian Croatian Scottish Welsh English Korean Vietnamese Thai "
    "Indonesian Pakistani Iranian Afghan Syrian Lebanese Saudi Palestinian Kenyan Nigerian "
    "Ghanaian Ethiopian Moroccan Algerian Argentine Chilean Colombian Peruvian Cuban Muslim "
    "Christian Catholic Jewish Arab Asian African Western Olympic Islamic"
).split()
_EVENTS = [
    "Olympics",
    "World Cup",
    "Nobel Prize",
    "Grand Slam",
    "Tour de France",
    "Super Bowl",
    "Champions League",
    "Wimbledon",
    "Oscars",
    "Euro 2024",
    "Davis Cup",
    "Ryder Cup",
    "US Open",
    "French Open",
    "Australian Open",
    "Formula One",
    "Copa America",
    "Africa Cup of Nations",
    "Winter Olympics",
    "Paralympics",
    "Cannes Film Festival",
    "Golden Globes",
    "Grammy Awards",
    "Eurovision",
    "Christmas",
    "Ramadan",
    "Easter",
    "Cold War",
    "World War Two",
    "English",
    "Spanish",
    "Arabic",
    "Mandarin",
]
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December"
_MONTHS = _MONTHS.split()

# ---------------------------------------------------------------------------- news topics

# Each topic is a bag of nouns and verbs (in the tenses headlines use); the frames are shared by
# every topic, so only the words tell topics apart and a model learns the words, not the frames.
_TOPICS = {
    "World": dict(
        noun=_words(
            "president|prime minister|foreign minister|rebels|government troops|protesters|army|"
            "diplomats|world leaders|voters|opposition|parliament|ceasefire|peace talks|election|"
            "border crisis|sanctions|peace deal|constitution|refugees|nuclear programme|"
            "referendum|war|hostages|embassy|capital|summit|militants|coup|ambassador|"
            "troops|soldiers|police|ministers|lawmakers|senate|congress|cabinet|rebel leader|"
            "insurgents|bomb attack|air strikes|famine|earthquake|floods|aid workers|"
            "humanitarian aid|asylum seekers|human rights|treaty|talks|negotiators|polls|"
            "campaign|candidates|ballot|riots|curfew|occupation|border|regime|dictator|"
            "king|queen|monarchy|court ruling|death toll|victims|survivors|civilians|"
            "kidnappers|explosion|gunmen|prisoners|dissidents|independence|province|villagers|"
            "foreign ministry|state media|opposition leader|separatists|rebel group|warlord|"
            "peacekeepers|United Nations envoy|aid convoy|refugee camp|missile strike|drone strike|"
            "hostage crisis|general strike|state of emergency|martial law|prime ministership|"
            "interim government|exiled leader|junta|militia|clashes|uprising|crackdown|massacre|"
            "genocide|war crimes|tribunal|extradition|deportation|migrants|border guards|"
            "diplomatic row|trade war|nuclear talks|arms deal|missile test|inauguration|"
            "coalition|landslide victory|runoff|vote count|exit polls|impeachment|scandal|"
            "Pope|cardinal|pilgrims|cyclone|hurricane|typhoon|tsunami|volcano|wildfire|evacuees",
            sep="|",
        ),
        verb=_words(
            "meet|met|meets|agree|agreed|agrees|call for|called for|calls for|reject|rejected|"
            "condemn|condemned|warn|warned|sign|signed|vote on|voted on|protest|protested|"
            "negotiate|negotiated|elect|elected|invade|invaded|withdraw|withdrew|"
            "attack|attacked|kill|killed|kills|flee|fled|free|freed|arrest|arrested|"
            "bomb|bombed|resign|resigns|accuse|accused|deploy|deployed|pass|passed|ban|banned|"
            "evacuate|evacuated|rule|ruled|sentence|sentenced|storm|stormed|"
            "overthrow|overthrew|annex|annexed|impose|imposed|lift|lifted|expel|expelled|"
            "veto|vetoed|ratify|ratified|swear in|sworn in|mourn|mourned|"
            "retake|retook|surrender|surrendered|execute|executed|pardon|pardoned|oust|ousted",
            sep="|",
        ),
    ),
    "Sports": dict(
        noun=_words(
            "striker|coach|champion|team|captain|goalkeeper|club|quarterback|sprinter|fans|title|"
            "final|match|league|championship|cup final|gold medal|race|tournament|semi-final|"
            "season|derby|goal|stadium|referee|player|squad|medal|record|playoffs|"
            "tennis star|golfer|cyclist|pitcher|batsman|boxer|jockey|swimmer|skier|driver|"
            "midfielder|defender|manager|rookie|veteran|olympic champion|world champion|"
            "grand prix|open|marathon|world record|penalty|hat-trick|overtime|innings|"
            "home run|touchdown|knockout|lap|podium|qualifier|fixture|transfer|contract|"
            "injury|fans|supporters|relay|sprint|set|round|stage|leaderboard|trophy|"
            "rugby team|cricket team|basketball team|hockey team|baseball team|racing team|"
            "forward|winger|centre-back|full-back|point guard|pitcher|wicket|test match|"
            "one-day series|grand slam title|seeded player|top seed|wild card|doubles|singles|"
            "free kick|corner|red card|yellow card|extra time|shootout|clean sheet|comeback|"
            "relegation|promotion|league leaders|title race|transfer window|loan deal|"
            "olympic team|national team|coach of the year|most valuable player|draft pick|"
            "heavyweight title|bout|fight|knockout win|pole position|qualifying|pit stop|"
            "Formula One|grand tour|stage win|yellow jersey|slam dunk|three-pointer|playoff game|"
            "World Series|Super Bowl|Stanley Cup|Wimbledon|Masters|Open Championship|Ryder Cup",
            sep="|",
        ),
        verb=_words(
            "win|won|wins|lose|lost|loses|beat|beats|score|scored|scores|reach|reached|clinch|"
            "clinched|defend|defended|draw|drew|qualify|qualified|"
            "train|trained|thrash|thrashed|retire|retired|retires|"
            "hit|hits|pitch|pitched|race|raced|finish|finished|sack|sacked|transfer|"
            "triumph|triumphed|equalise|equalised|withdraw from|withdrew from|crash out|"
            "crashed out|advance|advanced|edge|edged|outscore|outscored|"
            "sink|sank|stun|stunned|rout|routed|hammer|hammered|overcome|overcame|"
            "tie|tied|knock out|knocked out|sweep|swept|dominate|dominated|"
            "crown|crowned|relegate|relegated|promote|promoted|bench|benched",
            sep="|",
        ),
    ),
    "Business": dict(
        noun=_words(
            "shares|stocks|investors|company|central bank|oil prices|dollar|profits|retail sales|"
            "economy|exports|stock market|earnings|interest rates|inflation|merger|takeover|"
            "quarterly results|revenue|market|prices|budget deficit|banks|jobs|sales|euro|"
            "bonds|tax|unemployment|fuel costs|profit|loss|losses|dividend|shareholders|"
            "chief executive|board|lender|bank|insurer|retailer|airline|car maker|oil giant|"
            "factory|output|growth|recession|GDP|trade deficit|exports|imports|tariffs|"
            "currency|yen|pound|gold prices|commodity prices|housing market|mortgage rates|"
            "consumer spending|wages|workers|strike|layoffs|bankruptcy|debt|loans|"
            "stock exchange|index|Nasdaq|bid|deal|acquisition|sales forecast|costs|recall|"
            "Wall Street|Dow Jones|FTSE|Nikkei|treasury yields|bond market|hedge fund|"
            "private equity|venture capital|initial public offering|share price|market value|"
            "annual report|outlook|guidance|analysts|economists|consumer confidence|"
            "factory orders|jobless claims|payrolls|trade surplus|current account|"
            "crude oil|natural gas|steel|copper|coffee prices|wheat prices|supermarket chain|"
            "carmaker|drugmaker|chipmaker|telecoms group|media group|mining company|"
            "pension fund|credit rating|downgrade|bailout|stimulus|fiscal policy|rate cut|"
            "rate hike|price war|supply chain|shareholder vote|buyout|spin-off|job cuts",
            sep="|",
        ),
        verb=_words(
            "fall|fell|falls|rise|rose|rises|jump|jumped|jumps|drop|dropped|slump|slumped|"
            "climb|climbed|climbs|surge|surged|slip|slipped|raise|raised|raises|cut|cuts|"
            "buy|bought|sell|sold|report|reported|reports|post|posted|forecast|"
            "ease|eased|eases|soar|soared|plunge|plunged|acquire|acquired|merge|merged|"
            "invest|invested|recall|recalled|borrow|borrowed|lend|lent|hire|hired|"
            "lay off|laid off|trade|traded|beat forecasts|missed forecasts|cheer|cheered|"
            "tumble|tumbled|rally|rallied|rebound|rebounded|stall|stalled|shrink|shrank|"
            "expand|expanded|downgrade|downgraded|list|listed|delist|delisted|"
            "restructure|restructured|outsource|outsourced|profit from|profited from|"
            "go bankrupt|went bankrupt|file for bankruptcy|filed for bankruptcy",
            sep="|",
        ),
    ),
    "Sci/Tech": dict(
        noun=_words(
            "researchers|scientists|engineers|software|chip|computer|astronomers|internet|hackers|"
            "smartphone|satellite|software update|security flaw|planet|browser|robot|"
            "search engine|wireless network|telescope|operating system|virus|laptop|space|"
            "study|technology|website|data|phone|network|genome|"
            "processor|microchip|computer maker|software maker|app|apps|users|passwords|"
            "email|spam|online music|digital camera|video game|game console|tablet|"
            "broadband|cloud service|artificial intelligence|algorithm|database|server|"
            "space probe|rocket|spacecraft|space station|Mars|Moon|galaxy|comet|asteroid|"
            "species|fossil|dinosaur|climate change|glaciers|vaccine|gene|cells|brain|"
            "physicists|biologists|laboratory|experiment|battery|solar panel|electric car|"
            "web browser|search results|encryption|worm|malware|cyber attack|"
            "quantum computer|supercomputer|semiconductor|microprocessor|graphics card|"
            "social network|online service|streaming service|mobile network|5G network|"
            "Wi-Fi|Bluetooth|open source|Linux|Windows|source code|programmers|developers|"
            "chatbot|language model|machine learning|neural network|data centre|privacy|"
            "touchscreen|headset|virtual reality|drone|self-driving car|electric vehicle|"
            "Mars rover|lunar lander|space telescope|black hole|exoplanet|solar system|"
            "particle physics|DNA|stem cells|clinical trial|gene therapy|antibiotics|"
            "bacteria|ocean|coral reef|ice sheet|carbon emissions|fusion reactor|"
            "lab|NASA mission|launch pad|astronauts|orbit",
            sep="|",
        ),
        verb=_words(
            "unveil|unveiled|unveils|launch|launched|launches|discover|discovered|develop|"
            "developed|release|released|releases|test|tested|build|built|fix|fixed|hack|hacked|"
            "study|studied|upgrade|upgraded|design|designed|"
            "announce|announced|announces|invent|invented|detect|detected|spot|spotted|"
            "map|mapped|decode|decoded|patch|patched|download|downloaded|orbit|orbited|"
            "observe|observed|simulate|simulated|steal data|stole data|crash|crashed|"
            "code|coded|program|programmed|encrypt|encrypted|stream|streamed|"
            "sequence|sequenced|clone|cloned|measure|measured|photograph|photographed|"
            "land on|landed on|dock with|docked with|compute|computed|install|installed",
            sep="|",
        ),
    ),
}
_TOPIC_FRAMES = [
    "{N1} {AUX} {V} {DET} {ADJ} {N2}",
    "{DET} {ADJ} {N1} {V} {DET} {N2}",
    "{N1} {V} {N2}",
    "the {N1} {V} the {N2}",
    "{N1} {V} after {N2} {V2}",
    "{N1} and {N2} {V}",
    "{N1} {V} as {N2} {V2}",
    "officials say {N1} {V} {N2}",
    "{N1} {V} {N2} ahead of the {N3}",
    "the {N1} {V} over {N2}",
    "{N1} {V} {N2} to reach the {N3}",
    "{N1} : {N2} {V}",
]
# words every topic uses, so that they carry no topic: a model must look at the topic words
_FILLER = dict(
    AUX="plans to|prepares to|is set to|hopes to|will|may|could|says it will|promises to".split(
        "|"
    ),
    DET="a|the|his|her|their|its|a new".split("|"),
    ADJ=(
        "new|faster|third|big|major|top|first|second|cheaper|record|surprise|long-awaited|"
        "latest|key|final|early"
    ).split("|"),
)
_TOPIC_TAILS = [
    "",
    "",
    "",
    " on {day}",
    " in {city}",
    " in {country}",
    " this week",
    " last year",
    " , reports say",
]
# who a headline of each topic may name: a country, a club, a company
_TOPIC_NAMES = {
    "World": _COUNTRIES,
    "Sports": ["Manchester United", "Real Madrid", "Chelsea", "Arsenal", "Juventus", "Brazil"],
    "Business": (
        "Toyota Ford Siemens Shell BP Exxon Walmart Boeing Airbus Citigroup Barclays HSBC "
        "Volkswagen Nestle Unilever Pfizer Disney Fiat Renault"
    ).split(),
    "Sci/Tech": "Google Microsoft Apple Amazon IBM Intel Samsung Sony Nokia Oracle Yahoo NASA".split(),
}

# ---------------------------------------------------------------------------- reviews

_POS = _words(
    "wonderful delightful moving brilliant charming gripping warm clever beautiful joyful great "
    "excellent superb funny touching fantastic amazing enjoyable stunning powerful memorable "
    "fresh smart witty engaging lovely terrific outstanding impressive heartfelt inspiring "
    "entertaining good fun perfect magnificent riveting thoughtful hilarious refreshing "
    "generous original uplifting gorgeous tender sharp exciting compelling elegant rich "
    "satisfying marvellous lively sweet haunting exhilarating absorbing affecting vivid "
    "awesome excellent fabulous splendid glorious wonderful lovable likeable charismatic "
    "captivating enchanting mesmerising mesmerizing spellbinding breathtaking dazzling "
    "astonishing remarkable extraordinary exceptional sublime masterful accomplished "
    "polished assured confident ambitious bold daring inventive imaginative creative "
    "inspired intelligent insightful profound poignant powerful rousing stirring thrilling "
    "suspenseful tense taut nail-biting gripping unforgettable timeless classic flawless "
    "beautiful pretty cute adorable heartwarming feel-good sweet genuine honest sincere "
    "convincing believable authentic nuanced layered rich deep satisfying rewarding fun "
    "hilarious amusing charming delightful playful clever smart sharp fresh original "
    "unique stylish slick gorgeous lush epic grand spectacular jaw-dropping top-notch "
    "first-rate superb wonderful brilliant great fine solid strong nice pleasant cool"
)
_NEG = _words(
    "dull tedious clumsy awful lifeless boring messy bland painful forgettable terrible bad poor "
    "weak predictable silly stupid slow disappointing confusing horrible flat pointless annoying "
    "lazy shallow unfunny overlong ugly mediocre dreadful tiresome muddled pretentious "
    "incoherent sloppy dismal lame "
    "thin cheap rushed cliched hollow clunky tired stale empty crude ridiculous irritating "
    "bloated soulless grim lousy amateurish wooden plodding uninspired "
    "atrocious abysmal appalling pathetic useless worthless hopeless tedious monotonous "
    "repetitive formulaic derivative unoriginal generic lazy sloppy shoddy careless "
    "incompetent amateur unwatchable unbearable insufferable excruciating cringeworthy "
    "embarrassing awkward stiff hammy overacted wooden lifeless joyless humourless "
    "pointless aimless meandering rambling confused convoluted nonsensical illogical "
    "implausible unbelievable contrived forced heavy-handed preachy smug sentimental "
    "mawkish sappy syrupy cheesy corny trite hackneyed stale worn-out predictable obvious "
    "shallow superficial vapid empty hollow thin weak feeble limp tepid lukewarm bland "
    "dreary drab gloomy depressing miserable ugly nasty vile gross offensive disgusting "
    "unpleasant irritating annoying grating obnoxious exhausting draining long overlong "
    "sluggish slow dull boring tiresome terrible horrible awful dreadful bad worse worst"
)
_POS_IDIOMS = [
    "highly recommended",
    "a must see",
    "worth every minute",
    "a real treat",
    "a triumph",
    "one of the best films of the year",
    "i loved every minute of it",
    "a joy to watch",
    "an instant classic",
    "a real gem",
    "a masterpiece",
    "pure magic",
    "worth the price of admission",
    "do not miss it",
    "go and see it",
    "five stars",
    "ten out of ten",
    "a perfect evening out",
    "it made my day",
    "i could watch it again and again",
    "it blew me away",
    "it kept me on the edge of my seat",
    "a crowd pleaser",
]
_NEG_IDIOMS = [
    "a waste of time",
    "a total mess",
    "not worth watching",
    "a big disappointment",
    "one of the worst films of the year",
    "i hated every minute of it",
    "a chore to sit through",
    "avoid it",
    "a complete disaster",
    "a total flop",
    "a huge letdown",
    "what a mess",
    "save your money",
    "skip this one",
    "do not bother",
    "one star",
    "zero out of ten",
    "i fell asleep",
    "i want my money back",
    "it put me to sleep",
    "it goes nowhere",
    "nothing happens",
    "i could not wait for it to end",
    "a painful experience",
]
_LIKE = {
    1: ["loved", "enjoyed", "liked", "adored", "really liked", "really enjoyed", "admired"],
    0: ["hated", "disliked", "regretted", "could not stand", "was bored by", "despised"],
}
# nouns that carry the verdict themselves: "a gem", "a mess"
_VERDICT = {
    1: "gem masterpiece triumph delight treat joy winner pleasure marvel classic knockout".split(),
    0: "mess disaster bore failure flop letdown chore dud mistake joke disgrace snooze".split(),
}
# what a review talks about: countable nouns take "a" ("a dull film"); mass nouns only "the"
# ("the acting is dull"); plurals "are"
_THINGS = (
    "film movie story script ending soundtrack cast plot comedy drama thriller remake sequel "
    "picture performance documentary musical cartoon show series episode"
).split()
_MASS = "acting direction dialogue pacing photography music humour story-telling editing".split()
_PLURAL = "performances characters effects visuals jokes songs actors scenes".split()
_ADV = {
    1: [
        "beautifully shot",
        "well acted",
        "brilliantly written",
        "wonderfully played",
        "beautifully made",
        "well directed",
        "skilfully told",
    ],
    0: [
        "badly acted",
        "poorly written",
        "painfully slow",
        "far too long",
        "too slow",
        "poorly directed",
        "badly edited",
        "clumsily told",
    ],
}
_BE = ["is", "was", "feels", "seems", "felt", "looks"]
_VERY = ["", "", "", "very ", "really ", "truly ", "so "]
_VERY_BEFORE_NOUN = _VERY[:-1]  # "a so dull film" is not English


_YOU_WORDS = {"unique", "union", "unit", "united", "university", "universal", "uniform"}


def _a(phrase: str) -> str:
    """The phrase with its indefinite article, by sound ("an awful film", "a unique film")."""
    first = phrase.split()[0]
    sounds_y_or_w = first.startswith(("one", "eu", "use", "usu", "ukrain")) or first in _YOU_WORDS
    vowel = first[0] in "aeiou" and not sounds_y_or_w
    return f"{'an' if vowel or first.startswith(('hon', 'hour')) else 'a'} {phrase}"


def _articles(words: list[str]) -> list[str]:
    """Each "a" / "A" of a frame made "an" where the word drawn after it needs it."""
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word in ("a", "A"):
            article = _a(out[i + 1].lower()).split()[0]
            out[i] = article if word == "a" else _cap(article)
    return out


_PLAIN = [
    "The meeting ended without an agreement .",
    "It was the third time this year .",
    "Prices rose sharply last week .",
    "The talks will resume next month .",
    "Nobody was hurt in the fire .",
    "The report will be published later .",
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class _World:
    """The name lists and one random stream shared by every file."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def person(self) -> str:
        r = self.rng.random()
        if r < 0.75:
            return f"{self.rng.choice(_FIRST)} {self.rng.choice(_LAST)}"
        return self.rng.choice(_LAST) if r < 0.92 else self.rng.choice(_FIRST)

    def pick(self, kind: str) -> str:
        table = {
            "city": _CITIES,
            "country": _COUNTRIES,
            "org": _ORGS,
            "national": _NATIONAL,
            "event": _EVENTS,
            "day": _DAYS,
            "month": _MONTHS,
        }
        if kind == "person":
            return self.person()
        if kind == "place":
            return self.rng.choice(_CITIES if self.rng.random() < 0.6 else _COUNTRIES)
        return self.rng.choice(table[kind])


# words headline case leaves in lower case
_SMALL_WORDS = set("a an the of in on at to as and or for by with from after over".split())


def _topic_sentence(w: _World, topic: str) -> str:
    r = w.rng
    t = _TOPICS[topic]
    n1, n2, n3 = r.sample(t["noun"], 3)
    if r.random() < 0.3:  # a named actor: a country, a club, a company
        n1 = r.choice(_TOPIC_NAMES[topic])
    frame = r.choice(_TOPIC_FRAMES)
    tail = r.choice(_TOPIC_TAILS).format(
        day=w.pick("day"), city=w.pick("city"), country=w.pick("country")
    )
    filler = {k: r.choice(v) for k, v in _FILLER.items()}
    text = frame.format(
        N1=n1, N2=n2, N3=n3, V=r.choice(t["verb"]), V2=r.choice(t["verb"]), **filler
    )
    text = " ".join(_articles((text + tail).split()))
    if r.random() < 0.3:  # headline case, as many wires and sites write them
        text = " ".join(x if x in _SMALL_WORDS else _cap(x) for x in text.split())
    return _cap(f"{text} .")


def _review(w: _World) -> tuple[str, int]:
    """A short review with its polarity. The frames are shared by both labels; what decides is
    the words (a large lexicon) and how they are composed: negation flips ("not good", "never
    boring", "did not like"), and in a contrast the second clause wins."""
    r = w.rng
    label = r.randint(0, 1)

    def adj(pol: int, very: list[str] = _VERY) -> str:
        return r.choice(very) + r.choice(_POS if pol else _NEG)

    def clause(pol: int) -> str:
        thing, be = r.choice(_THINGS + _MASS), r.choice(_BE)
        forms = [
            f"the {r.choice(_PLURAL)} {r.choice(['are', 'were', 'feel', 'seem'])} {adj(pol)}",
            f"the {thing} {be} {adj(pol)}",
            f"the {thing} {be} {adj(pol)} and {adj(pol)}",
            f"the {thing} {be} not {adj(1 - pol)}",  # negated opposite
            f"it {be} {adj(pol)}",
            f"it {be} never {adj(1 - pol)}",
            f"the {thing} {be} {r.choice(_ADV[pol])}",
        ]
        return r.choice(forms)

    thing = r.choice(_THINGS)
    forms = [
        lambda: clause(label),
        lambda: clause(label),
        lambda: f"{clause(1 - label)} , but {clause(label)}",
        lambda: f"although {clause(1 - label)} , {clause(label)}",
        lambda: f"{adj(label)} and {adj(label)}",
        lambda: f"{adj(label)} , {adj(label)} and {adj(label)}",
        lambda: _a(f"{adj(label, _VERY_BEFORE_NOUN)} {thing}"),
        lambda: (
            _a(f"{adj(label, _VERY_BEFORE_NOUN)} {thing}")
            + " with "
            + _a(f"{adj(label, _VERY_BEFORE_NOUN)} {r.choice(_THINGS)}")
        ),
        lambda: f"{r.choice(_ADV[label])}",
        lambda: f"i {r.choice(_LIKE[label])} the {thing}",
        lambda: f"i {r.choice(_LIKE[label])} it",
        lambda: (
            f"i did not {r.choice(['like', 'enjoy'])} the {thing}"
            if not label
            else "i would watch it again"
        ),
        lambda: r.choice(_POS_IDIOMS if label else _NEG_IDIOMS),
        lambda: f"the {thing} by {w.person()} {r.choice(_BE)} {adj(label)}",
        lambda: f"the {'best' if label else 'worst'} {thing} of the year",
        *_more_reviews(w, label, adj, clause, thing),
    ]
    text = r.choice(forms)()
    if not text.endswith("?"):
        text += r.choice([" .", " .", " !", "", " !!", " ..."])
    if r.random() < 0.7:  # most people write "I"; some type everything in lower case
        text = " ".join("I" if x == "i" else x for x in text.split())
    return (_cap(text) if r.random() < 0.6 else text), label


def _more_reviews(w: _World, label: int, adj, clause, thing: str) -> list:
    """v4's shapes: verdict nouns, questions, "not ... at all", exclamations, a named actor."""
    r = w.rng
    other = 1 - label
    verdict = r.choice(_VERDICT[label])
    before_noun = _VERY_BEFORE_NOUN
    return [
        lambda: _a(verdict),
        lambda: f"the {thing} is {_a(adj(label, before_noun) + ' ' + verdict)}",
        lambda: f"what {_a(verdict)}",
        lambda: f"what {_a(adj(label, before_noun) + ' ' + thing)}",
        lambda: f"not {adj(other, before_noun)} at all",
        lambda: f"anything but {adj(other, [''])}",
        lambda: f"how can {_a(thing)} be so {adj(label, [''])} ?",
        lambda: f"why is the {thing} so {adj(label, [''])} ?",
        lambda: f"{adj(label)} from start to finish",
        lambda: f"{adj(label)} , {adj(label, before_noun)} {thing}",
        lambda: f"{w.person()} is {adj(label)} in it",
        lambda: f"even the {thing} {r.choice(_BE)} {adj(label)}",
        lambda: f"i {r.choice(_LIKE[label])} every minute of it",
        lambda: f"easily the {'best' if label else 'worst'} {thing} i have seen",
        lambda: f"i {'would' if label else 'would never'} recommend it",
        lambda: f"i {'can not wait' if label else 'do not want'} to see it again",
        lambda: f"{clause(label)} and {clause(label)}",
        lambda: f"{clause(other)} , and yet {clause(label)}",
        lambda: f"not {_a(r.choice(_VERDICT[other]))} , {clause(label)}",
    ]


_NER_FRAMES = [
    "{person} flew from {city} to {city} for a meeting with {org} .",
    "{person} visited {place} on {day} .",
    "{person} works for {org} in {city} .",
    "{org} opened a new factory in {country} .",
    "The {national} team won the {event} in {city} .",
    "Shares in {org} fell after {person} spoke in {city} .",
    "Prime Minister {person} met officials from {org} in {city} .",
    "Yesterday {org} announced a deal with {org} .",
    "{person} , a spokesman for {org} , said on {day} that talks would continue .",
    "On {day} , {person} told reporters in {city} that {org} would cut jobs .",
    "{org} said its profits rose in {month} .",
    "President {person} arrived in {country} for a two-day visit .",
    "{person} scored twice as {org} beat {org} in {city} .",
    "The {event} will be held in {city} next year .",
    "{person} of {country} won the gold medal at the {event} .",
    "Police in {city} arrested {person} on {day} .",
    "{person} said the {national} government would not change its policy .",
    "{org} , based in {city} , makes software for banks .",
    "In {month} , {person} moved to {city} to join {org} .",
    "A report by {org} said prices in {country} rose by 3 percent .",
    "{person} and {person} met in {city} .",
    "Officials from {country} and {country} signed the agreement .",
    "Thousands of {national} fans travelled to {city} .",
    "Markets in {city} closed higher on {day} .",
    "{person} was born in {city} and studied in {country} .",
    "The {national} company {org} hired {person} as chief executive .",
    "According to {org} , {person} will leave {city} in {month} .",
    "{person} thanked {org} after the {event} .",
    "{person} , who grew up in {place} , now lives in {city} .",
    "Fans of {org} celebrated in the streets of {city} .",
    "{org} and {org} agreed to merge , the companies said on {day} .",
    "The {national} striker {person} joined {org} for 20 million euros .",
    "{person} will speak at a conference in {city} in {month} .",
    "Talks between {country} and {country} ended without a deal .",
    "{person} beat {person} in the final of the {event} .",
    "Heavy rain caused floods in {place} last week .",
    "{org} chief executive {person} resigned on {day} .",
    "Tourists from {country} flocked to {city} during the {event} .",
    "{person} , 34 , has played for {org} since 2019 .",
    "A {national} court fined {org} over the deal .",
    "{person} spent ten years in {country} before returning to {place} .",
    "Is {person} coming to {city} for the {event} ?",
    "{person} lost to {person} at the {event} .",
    "Engineers at {org} in {city} built the new engine .",
]
# Sentences of everyday words around (or without) names: common nouns, roles and verbs are O
# wherever they stand, capitalised at the start of a sentence too, so a model learns what is
# *not* a name instead of tagging every word it has not seen in a frame.
_PLAIN_FRAMES = [
    "The {noun} {verb} the {noun} {time} .",
    "{Noun} {verb} the {noun} {time} .",
    "The {noun} said the {noun} {verb} the {noun} .",
    "{person} {verb} the {noun} in {place} .",
    "The {noun} in {place} {verb} the {noun} {time} .",
    "{org} {verb} the {noun} {time} .",
    "{person} , a {role} from {place} , {verb} the {noun} .",
    "Our {noun} {verb} a new {noun} .",
    "{person} {verb} a {noun} {time} .",
    "The {role} {verb} {person} in {place} .",
    "{Noun} in {place} {verb} the {noun} {time} .",
    "A {role} {verb} the {noun} and the {noun} .",
    "The {noun} {verb} {time} , the {role} said .",
    "{person} told the {role} that the {noun} {verb} the {noun} .",
    "Several {noun} {verb} the {noun} near {place} .",
    "{Noun} and {noun} {verb} the {noun} .",
]
_NOUNS = _words(
    "bank company market river storm hospital car money police driver teacher students book "
    "judge trial government taxes fuel airline quarter neighbours family school union strike "
    "farmers minister president reporters drought coast rain villages prices profits sales "
    "court children doctors nurses workers engineers soldiers fans troops officials voters crowd "
    "council museum bridge road train plane ship factory office shop restaurant hotel church "
    "garden house village island mountain forest lake snow wind fire flood report plan law "
    "budget deal contract team match race game season coach player club music film show "
    "newspaper letter phone computer price job jobs bill vote election meeting talks visit "
    "project building station airport harbour port bus traffic weather winter summer water "
    "food crops cattle staff board shareholders customers passengers residents "
    "tourists protesters police officers firefighters scientists researchers study results "
    "window door table chair kitchen bedroom garage street beach valley desert "
    "castle palace tower library university college hall stage theatre concert festival "
    "party wedding funeral birthday holiday trip journey flight ticket passport border "
    "army navy ships boats engine machine software website network battery signal "
    "doctor patient medicine vaccine virus disease hospital clinic ambulance accident "
    "crash storm earthquake election campaign debate speech interview article story novel "
    "poem painting photo camera screen radio television studio album song band singer actor "
    "actress director audience stadium track pool gym horse dog cat bird fish farm field "
    "harvest wheat coffee tea bread milk wine beer market supermarket mall bakery pharmacy "
    "lawyers judges jury verdict sentence prison cell guard gate fence wall roof floor stairs"
)
_ROLES = _words(
    "lawyer teacher doctor spokesman spokeswoman engineer farmer student writer banker nurse "
    "chef pilot judge officer reporter coach manager minister official doctor scientist "
    "professor priest mayor soldier driver clerk analyst "
    "captain goalkeeper striker referee singer actor director editor designer architect "
    "accountant mechanic plumber electrician cashier waiter baker butcher fisherman miner "
    "surgeon dentist pharmacist vet detective sergeant general colonel ambassador senator "
    "governor chairman president founder owner neighbour landlord tenant volunteer"
)
_VERBS = _words(
    "said bought sold opened closed visited called asked treated delayed raised cut lost won "
    "built moved left found sent read watched paid hired praised criticised rejected approved "
    "questioned ignored repaired cleaned signed reviewed blamed welcomed cancelled postponed "
    "announced expected reported defended attacked reached missed changed improved reduced "
    "increased warned thanked helped followed joined supported opposed described studied "
    "fixed painted cooked carried dropped broke stole chased caught taught learned wrote "
    "sang played watched heard saw met married hosted invited arrested fined sued charged "
    "interviewed inspected tested designed launched delivered ordered shipped planted "
    "harvested crossed climbed entered emptied filled locked unlocked shared"
)
_TIMES = [
    "",
    "",
    "on {day}",
    "in {month}",
    "next year",
    "last week",
    "overnight",
    "again",
    "this morning",
    "after the meeting",
    "for the first time",
    "two years ago",
]


def _plain_ner_sentence(w: _World) -> list[tuple[str, str]]:
    """A sentence of everyday words, with or without names, tagged like `_ner_sentence`."""
    r = w.rng
    out: list[tuple[str, str]] = []
    for part in r.choice(_PLAIN_FRAMES).split():
        slot = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if slot in ("noun", "Noun"):
            word = r.choice(_NOUNS)
            out.append((_cap(word) if slot == "Noun" else word, "O"))
        elif slot in ("role", "verb"):
            out.append((r.choice(_ROLES if slot == "role" else _VERBS), "O"))
        elif slot == "time":
            when = r.choice(_TIMES).format(day=w.pick("day"), month=w.pick("month"))
            out += [(x, "O") for x in when.split()]
        elif slot is not None:
            words, tag = w.pick(slot).split(), _NER_KIND[slot]
            out += [(words[0], f"B-{tag}")] + [(x, f"I-{tag}") for x in words[1:]]
        else:
            out.append((part, "O"))
    return _tagged_articles(out)  # the frames say "a {role}": the word drawn picks a or an


_NER_KIND = {"person": "PER", "city": "LOC", "country": "LOC", "place": "LOC", "org": "ORG"}
_NER_KIND.update(national="MISC", event="MISC")


def _ner_sentence(w: _World) -> list[tuple[str, str]]:
    """Words with IOB2 tags (PER, LOC, ORG, MISC, as CoNLL-2003 tags them: days, months and
    sentence-initial words are O)."""
    r = w.rng
    if r.random() < 0.05:
        return [(x, "O") for x in r.choice(_PLAIN).split()]
    if r.random() < 0.4:
        return _plain_ner_sentence(w)
    out: list[tuple[str, str]] = []
    for part in r.choice(_NER_FRAMES).split():
        if part.startswith("{") and part.endswith("}"):
            kind = part[1:-1]
            words = w.pick(kind).split()
            tag = _NER_KIND.get(kind)
            if tag is None:  # days, months
                out += [(x, "O") for x in words]
            else:
                out += [(words[0], f"B-{tag}")] + [(x, f"I-{tag}") for x in words[1:]]
        else:
            out.append((part, "O"))
    return _tagged_articles(out)


def _tagged_articles(out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames' "a" made "an" where the word drawn after it needs it (tags unchanged)."""
    return list(zip(_articles([word for word, _ in out]), [tag for _, tag in out]))


def _document(w: _World) -> str:
    r = w.rng
    topic = r.choice(list(_TOPICS))
    sents = [
        f"{w.pick('city')} is a city in {w.pick('country')} , known for its "
        f"{r.choice(['markets', 'bridges', 'museums', 'harbour', 'universities'])} .",
        f"{w.person()} was born there and later worked for {w.pick('org')} .",
    ]
    for _ in range(r.randint(3, 8)):
        kind = r.random()
        if kind < 0.45:
            sents.append(_topic_sentence(w, topic))
        elif kind < 0.7:
            sents.append(_review(w)[0])
        else:
            sents.append(" ".join(word for word, _ in _ner_sentence(w)))
    sents.append(f"Today about {r.randint(2, 90)} thousand people live there .")
    # two paragraphs per document, so document-level structure exists for NSP
    cut = len(sents) // 2
    return " ".join(sents[:cut]) + "\n" + " ".join(sents[cut:])


def _files(seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    w = _World(rng)
    out: dict[str, str] = {}
    out["corpus/train.txt"] = "\n\n".join(_document(w) for _ in range(2000)) + "\n"
    for split, n in (("train", 3000), ("dev", 500)):
        rows = [_review(w) for _ in range(n)]
        out[f"sentiment/{split}.tsv"] = "sentence\tlabel\n" + "".join(
            f"{t}\t{y}\n" for t, y in rows
        )
        trows = []
        for _ in range(n):
            topic = rng.choice(list(_TOPICS))
            # a headline alone (as users paste them, often without a period) or with its lead
            text = " ".join(_topic_sentence(w, topic) for _ in range(rng.choice([1, 1, 2])))
            trows.append((text[:-2] if rng.random() < 0.5 else text, topic))
        out[f"topics/{split}.tsv"] = "".join(f"{t}\t{y}\n" for t, y in trows)
    for split, n in (("train", 3000), ("dev", 500)):
        sents = [_ner_sentence(w) for _ in range(n)]
        out[f"ner/{split}.txt"] = "".join(
            "".join(f"{wd} {tag}\n" for wd, tag in s) + "\n" for s in sents
        )
    return out


def sample_root() -> Path:
    base = os.environ.get("LMPLATFORM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lmplatform"
    )
    return Path(base) / f"sample-{VERSION}"


def ensure_sample(root: str | os.PathLike | None = None) -> Path:
    """Write the sample under `root` (default: the cache) unless an identical copy is there."""
    root = Path(root) if root is not None else sample_root()
    files = _files()
    digest = hashlib.sha256("".join(k + v for k, v in sorted(files.items())).encode()).hexdigest()
    stamp = root / ".complete"
    if stamp.is_file() and stamp.read_text() == digest:
        return root
    for rel, text in files.items():
        atomic_write_text(root / rel, text)
    atomic_write_text(stamp, digest)
    return root


def resolve_sample_uri(path: str | None) -> str | None:
    """Map `sample://x/y` to the local sample file, writing the sample first if needed."""
    if path is None or not path.startswith("sample://"):
        return path
    return str(ensure_sample() / path[len("sample://") :])
