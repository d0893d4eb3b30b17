"""A small built-in set of general-text paragraphs for the forgetting check.

Why built in: the perplexity check (mind_jax.eval.run.perplexity) must run
offline and must not use text the student was trained on. reasoning-gym
question texts would be offline too, but they are templated math prompts close
to the training data, so they measure in-domain fit rather than forgetting.
These paragraphs were written for this project: plain encyclopedic and everyday
prose on topics far from arithmetic word problems (nature, history, cooking,
technology, sport, language), with few numbers. They are not a standard corpus,
so only compare perplexities measured on the same text and tokenizer (the
before/after difference of one run); pass your own texts for anything else.
"""

PARAGRAPHS = (
    "Rivers shape the land they cross. Over thousands of years, flowing water carves "
    "valleys, carries sand and silt downstream, and builds wide plains where it finally "
    "slows down near the sea. Many early towns grew up beside rivers because they offered "
    "fresh water, fertile soil and an easy way to travel.",

    "Honeybees live in colonies that can hold tens of thousands of insects. Most of them "
    "are workers, which gather nectar and pollen, clean the hive and look after the young. "
    "A single queen lays the eggs, and in late summer the colony raises new queens so that "
    "part of it can leave and start a hive of its own.",

    "Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, "
    "yeast or a sourdough starter makes it rise by releasing gas, and baking sets the "
    "structure and browns the crust. Small changes in flour, time or temperature give "
    "loaves that look and taste very different.",

    "The printing press changed how ideas spread. Before it, books were copied by hand and "
    "were rare and expensive. Once pages could be printed quickly from movable type, "
    "pamphlets, newspapers and textbooks reached far more readers, and literacy slowly "
    "became common rather than a privilege of the few.",

    "A thunderstorm forms when warm, moist air rises quickly into colder air above it. The "
    "water vapour condenses into towering clouds, and collisions between ice particles "
    "separate electric charges. Lightning is the sudden discharge between those charges, "
    "and thunder is the sound of the air around it expanding violently.",

    "Learning a second language is easier with regular practice than with long, rare "
    "sessions. Listening to native speakers, reading simple stories and speaking without "
    "fear of mistakes all help. Most learners understand far more than they can say at "
    "first, and speaking catches up with time.",

    "Forests cover large parts of the northern continents. Conifers such as pine, spruce "
    "and fir keep their needles through the winter, which lets them start growing as soon "
    "as spring arrives. Their forests store great amounts of carbon in wood and in the "
    "cold, slowly decaying soil beneath them.",

    "A good night's sleep helps the body and the mind recover. During sleep the brain "
    "sorts the memories of the day, and the body repairs tissue and balances its "
    "hormones. People who sleep too little for many nights in a row often find it hard to "
    "concentrate and are more likely to fall ill.",

    "Football is played on every continent, from crowded city streets to large stadiums. "
    "Its rules are simple enough for children to pick up in an afternoon: two teams try to "
    "move the ball into the other side's goal without using their hands. That simplicity "
    "is a large part of why the game became so popular.",

    "Volcanoes are openings in the Earth's crust through which molten rock, gas and ash "
    "escape. Some erupt explosively and throw ash high into the sky, while others release "
    "slow rivers of lava. Over time, volcanic soil becomes very fertile, which is why "
    "farms are often found on the slopes of old volcanoes.",

    "The invention of the telephone allowed people to speak to each other across long "
    "distances for the first time. Early lines connected only a few homes and offices, "
    "and operators joined calls by hand. Today most conversations travel as digital "
    "signals through cables, radio towers and satellites.",

    "Whales are mammals, not fish. They breathe air through a blowhole on the top of their "
    "heads, give birth to live young and feed them with milk. Some species sing long, "
    "complex songs that can travel great distances through the ocean, and scientists are "
    "still learning what those songs mean.",

    "Gardening teaches patience. Seeds need the right soil, enough light and steady water, "
    "and even then some of them fail. Gardeners learn to read the weather, to notice "
    "pests early and to plan a season ahead, and many say the work calms them as much as "
    "the harvest rewards them.",

    "Ancient sailors found their way by watching the sun, the stars, the winds and the "
    "colour of the water. Later the magnetic compass let ships hold a course even under "
    "cloudy skies. Accurate clocks, which came much later, finally allowed navigators to "
    "work out how far east or west they had travelled.",

    "Museums collect objects that tell the story of people and nature: paintings, tools, "
    "fossils, clothing and machines. Curators decide what to show and how to explain it, "
    "and conservators protect fragile items from light, moisture and time. A visit can "
    "turn a distant period of history into something close and concrete.",

    "Coffee plants grow best in warm, wet regions near the equator. Their red fruits hold "
    "the seeds that we call beans, which are dried, roasted and ground before brewing. "
    "The roast changes the flavour a great deal: light roasts taste brighter and more "
    "acidic, while dark roasts taste bitter and smoky.",

    "Glaciers are rivers of ice that move slowly downhill under their own weight. As they "
    "flow, they scrape the rock beneath them and carry boulders far from where they "
    "started. Many mountain valleys owe their broad, rounded shape to glaciers that "
    "melted away long ago.",

    "A library is more than a room full of books. It lends films and music, offers quiet "
    "places to study, and helps people find reliable information. Librarians answer "
    "questions, run reading groups for children and teach visitors how to search for what "
    "they need.",

    "Birds migrate to follow food and mild weather. Some small songbirds fly across seas "
    "and deserts each autumn and return in spring to the same woods where they hatched. "
    "They find their way using the sun, the stars, the Earth's magnetic field and "
    "landmarks they remember from earlier journeys.",

    "Recycling turns used materials into new products. Paper can be pulped and pressed "
    "into fresh sheets, glass can be melted and shaped again, and many metals can be "
    "reused almost without limit. Sorting waste carefully at home makes the process "
    "cheaper and keeps more material out of landfills.",

    "Theatre brings stories to life in front of an audience. Actors, designers and "
    "musicians work together so that costumes, lighting and sound support what happens on "
    "stage. Because every performance is live, no two evenings are ever exactly the same, "
    "and the audience becomes part of the event.",

    "Mountains change the weather around them. Moist air that is pushed up their slopes "
    "cools and drops rain or snow on the windward side, while the far side often stays "
    "dry. This is why a green valley and a dry plain can lie only a short distance apart, "
    "separated by a single mountain range.",

    "Writing a clear letter starts with knowing what you want the reader to do. A short "
    "opening states the purpose, the middle gives the details in a sensible order, and the "
    "ending says what should happen next. Reading the letter aloud before sending it "
    "catches many awkward sentences.",

    "Cities need careful planning to work well. Streets, parks, schools, shops and homes "
    "must fit together so that people can move around easily and safely. Good public "
    "transport reduces traffic and pollution, and trees along the streets keep "
    "neighbourhoods cooler in hot summers.",
)
