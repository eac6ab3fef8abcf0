//! The pairing code's word list: 256 short, distinct English words (8 bits each), written for
//! warren.

/// The words, sorted.
pub const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alder", "alley", "alpha", "amber", "anchor",
    "angle", "ankle", "apple", "april", "apron", "arena", "argon", "armor", "arrow", "aspen", "atlas", "attic",
    "audio", "autumn", "avenue", "awning", "bacon", "badge", "bagel", "baker", "bamboo", "banjo", "barley", "barn",
    "basil", "basin", "beach", "beacon", "beaver", "bell", "bench", "berry", "bison", "blade", "blanket", "bloom",
    "board", "bonus", "boot", "bottle", "brass", "bread", "brick", "bridge", "brook", "broom", "bubble", "bucket",
    "bugle", "bunny", "butter", "cabin", "cable", "cactus", "camel", "candle", "canoe", "canyon", "carbon", "cargo",
    "carpet", "carrot", "castle", "cedar", "cello", "chalk", "cherry", "chess", "chimney", "cider", "circus", "citrus",
    "clay", "cliff", "clock", "cloud", "clover", "coast", "cobalt", "cocoa", "comet", "copper", "coral", "cotton",
    "cradle", "crane", "crayon", "cricket", "crystal", "cupola", "daisy", "delta", "denim", "desert", "diesel",
    "dingo", "dolphin", "donkey", "dragon", "drum", "dune", "eagle", "echo", "elbow", "elder", "ember", "engine",
    "falcon", "fennel", "fern", "ferry", "fiddle", "finch", "fjord", "flame", "flute", "forest", "fossil", "fountain",
    "fox", "galaxy", "garden", "garlic", "gecko", "ginger", "glacier", "globe", "goose", "granite", "grape", "gravel",
    "guitar", "hammer", "harbor", "hazel", "heron", "hollow", "honey", "horizon", "iceberg", "igloo", "indigo", "iris",
    "island", "ivory", "jacket", "jasmine", "jelly", "jigsaw", "juniper", "kayak", "kernel", "kettle", "kiwi", "koala",
    "ladder", "lagoon", "lantern", "laser", "lava", "lemon", "lilac", "linen", "lizard", "llama", "lobster", "locket",
    "lotus", "lunar", "magnet", "mango", "maple", "marble", "meadow", "melon", "meteor", "mint", "mirror", "mitten",
    "monsoon", "mosaic", "moss", "muffin", "nectar", "nickel", "noodle", "nutmeg", "oasis", "ocean", "olive", "onion",
    "opal", "orbit", "orchid", "otter", "oyster", "paddle", "panda", "paper", "parrot", "pasta", "pebble", "pepper",
    "piano", "pickle", "pigeon", "pillow", "pine", "planet", "plum", "pocket", "pollen", "poppy", "prairie", "pretzel",
    "prism", "pumpkin", "quartz", "quill", "rabbit", "radar", "radish", "raven", "reef", "ribbon", "river", "robin",
    "rocket", "rose", "ruby", "saddle", "saffron", "salmon", "sandal", "satin", "scarf", "shell", "silver", "sketch",
    "slate", "sleet", "sparrow", "spider", "spruce",
];
