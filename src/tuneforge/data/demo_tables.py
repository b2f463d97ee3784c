"""The demo data's vocabulary: ingredients (with their generic names, categories and the ways
recipes write them), dish kinds, brands, quantities and units. Pure data, kept in Python so the
rows stay compact (`_i(...)`) and typed; the rules that turn them into examples are in
`data/demo.py`."""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ingredient:
    """One generic ingredient and every way a recipe line may write it.

    `name` is the generic (the answer) for measured amounts; count measures use `singular` or
    `plural` when the number calls for it, and that form becomes the answer, as in RecipeNLG.
    """

    name: str
    cat: str
    measures: tuple[str, ...]
    pre: tuple[str, ...] = ()  # adjectives written before the food and dropped from the answer
    prep: str = ""  # key into _PREP: preparation written before or after, dropped
    brands: tuple[str, ...] = ()  # dropped
    alts: tuple[str, ...] = ()  # "X or Y": Y is dropped
    forms: tuple[str, ...] = ("{}",)  # surface forms around the generic, e.g. "{} extract"
    singular: str | None = None
    plural: str | None = None
    sizes: tuple[str, ...] = ()  # parenthesised container sizes, e.g. "(10 3/4 oz.)"
    title: tuple[str, ...] = ()  # words for recipe titles when this is the main ingredient


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split("|") if part)


def _i(
    name: str,
    cat: str,
    measures: str,
    *,
    pre: str = "",
    prep: str = "",
    brands: str = "",
    alts: str = "",
    forms: str = "{}",
    singular: str | None = None,
    plural: str | None = None,
    sizes: str = "",
    title: str = "",
) -> _Ingredient:
    # "|"-separated strings keep the table at one or two readable lines per ingredient.
    kinds = measures.split()
    if cat in ("spice", "sweetspice"):  # spices come by the teaspoon, not the tablespoon
        kinds = ["tsp" if k == "spoon" else k for k in kinds]
    return _Ingredient(
        name=name,
        cat=cat,
        measures=tuple(kinds),
        pre=_split(pre),
        prep=prep,
        brands=_split(brands),
        alts=_split(alts),
        forms=_split(forms),
        singular=singular,
        plural=plural,
        sizes=_split(sizes),
        title=_split(title) or (name.title(),),
    )


_SOUP = "(10 3/4 oz.)|(10 1/2 oz.)"

# The tables are data, kept compact on purpose; the formatter would put every string on its
# own line and make the tables ten times longer.
# fmt: off
_INGREDIENTS: tuple[_Ingredient, ...] = (
    # --- baking ---------------------------------------------------------------------------
    _i("flour", "baking", "cup", pre="all-purpose|plain|unbleached|sifted", prep="sift",
       brands="Gold Medal|Pillsbury"),
    _i("sugar", "baking", "cup spoon", pre="granulated|white", prep="sugar", brands="Domino"),
    _i("brown sugar", "baking", "cup spoon", pre="firmly packed|packed|light", prep="sugar",
       brands="Domino", title="Brown Sugar"),
    _i("powdered sugar", "baking", "cup", pre="sifted", prep="sift", brands="Domino"),
    _i("baking soda", "baking", "tsp", brands="Arm & Hammer"),
    _i("baking powder", "baking", "tsp", brands="Calumet|Clabber Girl"),
    _i("cornstarch", "baking", "spoon", brands="Argo"),
    _i("yeast", "baking", "pkg tsp", pre="active dry|dry|quick-rise", brands="Fleischmann's",
       sizes="(1/4 oz.)", title="Yeast"),
    _i("vanilla", "baking", "tsp", forms="{}|{}|{} extract|pure {} extract", brands="McCormick"),
    _i("almond extract", "baking", "tsp", brands="McCormick"),
    _i("cocoa", "baking", "cup spoon", pre="unsweetened|baking", brands="Hershey's",
       title="Chocolate|Cocoa"),
    _i("chocolate chips", "baking", "cup pkg", pre="semi-sweet|mini", brands="Nestle|Hershey's",
       sizes="(12 oz.)|(6 oz.)", title="Chocolate Chip"),
    _i("butterscotch chips", "baking", "cup pkg", brands="Nestle", sizes="(12 oz.)|(11 oz.)",
       title="Butterscotch"),
    _i("chocolate", "baking", "sq", pre="unsweetened|semi-sweet|baking", prep="melt",
       brands="Baker's", title="Chocolate|Fudge"),
    _i("shortening", "baking", "cup spoon", pre="solid", brands="Crisco"),
    _i("oil", "baking", "cup spoon", brands="Crisco|Mazola|Wesson", alts="shortening"),
    _i("vegetable oil", "baking", "cup spoon", brands="Crisco|Wesson"),
    _i("olive oil", "sauce", "spoon cup", pre="extra-virgin|extra virgin|light"),
    _i("graham cracker crumbs", "dessert", "cup", pre="fine", brands="Nabisco|Keebler",
       title="Graham Cracker"),
    _i("coconut", "baking", "cup", pre="flaked|shredded|sweetened flaked", prep="nut",
       brands="Baker's", title="Coconut"),
    _i("oats", "baking", "cup", pre="quick-cooking|quick|old-fashioned|rolled|uncooked",
       brands="Quaker", title="Oatmeal"),
    _i("raisins", "baking", "cup", pre="seedless", prep="plump", alts="nuts", title="Raisin"),
    _i("marshmallows", "dessert", "cup pkg count", pre="miniature|mini|large",
       singular="marshmallow", brands="Kraft|Jet-Puffed", sizes="(10 oz.)|(10 1/2 oz.)",
       title="Marshmallow"),
    _i("corn syrup", "baking", "cup spoon", pre="light|dark", brands="Karo"),
    _i("honey", "baking", "cup spoon", title="Honey"),
    _i("molasses", "baking", "cup spoon", pre="light|dark", brands="Grandma's", title="Molasses"),
    _i("cream of tartar", "baking", "tsp"),
    _i("cornmeal", "baking", "cup", pre="yellow|stone-ground", brands="Quaker", title="Corn"),
    _i("lemon juice", "baking", "spoon cup", pre="fresh|freshly squeezed", brands="ReaLemon",
       title="Lemon"),
    _i("lemon peel", "baking", "tsp", pre="grated|finely grated"),
    _i("baking mix", "baking", "cup", brands="Bisquick", title="Biscuit|Impossible"),
    _i("nuts", "nuts", "cup", prep="nut", title="Nut"),
    # --- dessert mixes and helpers --------------------------------------------------------
    _i("yellow cake mix", "dessert", "pkg", brands="Duncan Hines|Betty Crocker|Pillsbury",
       sizes="(18.25 oz.)|(18 oz.)", title="Dump|Cake Mix"),
    _i("white cake mix", "dessert", "pkg", brands="Duncan Hines|Betty Crocker|Pillsbury",
       sizes="(18.25 oz.)|(18 oz.)", title="Poke|Cake Mix"),
    _i("instant vanilla pudding", "dessert", "pkg", forms="{}|{} mix", brands="Jell-O|Royal",
       sizes="(3.4 oz.)|(3 3/4 oz.)|(5.1 oz.)", title="Vanilla Pudding|Banana Split"),
    _i("instant chocolate pudding", "dessert", "pkg", forms="{}|{} mix", brands="Jell-O|Royal",
       sizes="(3.9 oz.)|(5.9 oz.)", title="Chocolate Pudding|Dirt"),
    _i("instant pistachio pudding", "dessert", "pkg", forms="{}|{} mix", brands="Jell-O",
       sizes="(3.4 oz.)", title="Pistachio|Watergate"),
    _i("strawberry gelatin", "dessert", "pkg", brands="Jell-O|Royal", sizes="(3 oz.)|(6 oz.)",
       title="Strawberry Jell-O|Pink|Strawberry Pretzel"),
    _i("lime gelatin", "dessert", "pkg", brands="Jell-O|Royal", sizes="(3 oz.)|(6 oz.)",
       title="Lime Jell-O|Green|Lime"),
    _i("orange gelatin", "dessert", "pkg", brands="Jell-O", sizes="(3 oz.)|(6 oz.)",
       title="Orange Jell-O|Orange Sherbet"),
    _i("whipped topping", "dessert", "carton cup", prep="thaw", brands="Cool Whip",
       sizes="(8 oz.)|(12 oz.)|(16 oz.)", title="Cool Whip"),
    _i("condensed milk", "dessert", "can", pre="sweetened", brands="Eagle Brand|Borden",
       sizes="(14 oz.)", title="Magic|Eagle Brand"),
    _i("evaporated milk", "dessert", "can cup", brands="Carnation", sizes="(12 oz.)|(5 oz.)"),
    _i("pie crust", "dessert", "count", pre="unbaked|baked|deep-dish|prepared",
       plural="pie crusts", brands="Pillsbury", sizes="(9-inch)|(10-inch)|(9 inch)"),
    _i("crescent rolls", "dessert", "can", pre="refrigerated", brands="Pillsbury",
       sizes="(8 oz.)", title="Crescent"),
    _i("caramels", "dessert", "pkg count", singular="caramel", brands="Kraft",
       sizes="(14 oz.)", title="Caramel|Turtle"),
    _i("pretzels", "dessert", "cup", pre="thin|mini", prep="crumb", title="Pretzel"),
    # --- dairy ----------------------------------------------------------------------------
    _i("milk", "dairy", "cup qt", pre="whole|skim|2%|low-fat", prep="liquid", title="Milk"),
    _i("butter", "dairy", "cup spoon stick", pre="unsalted|sweet", prep="fat",
       alts="margarine|oleo", brands="Land O'Lakes", title="Butter"),
    _i("margarine", "dairy", "cup spoon stick", prep="fat", alts="butter",
       brands="Parkay|Blue Bonnet|Imperial"),
    _i("eggs", "dairy", "count", pre="large|extra-large|medium", prep="egg", singular="egg",
       title="Egg"),
    _i("egg whites", "dairy", "count", pre="large", prep="eggwhite", singular="egg white"),
    _i("egg yolks", "dairy", "count", pre="large", prep="egg", singular="egg yolk"),
    _i("sour cream", "dairy", "cup carton", pre="light|low-fat|reduced-fat",
       brands="Daisy|Breakstone's", sizes="(8 oz.)|(16 oz.)", title="Sour Cream"),
    _i("cream cheese", "dairy", "pkg", pre="light|low-fat|reduced-fat", prep="soft",
       brands="Philadelphia", sizes="(8 oz.)|(3 oz.)", title="Cream Cheese|Cheesecake"),
    _i("cheddar cheese", "dairy", "cup lb pkg", pre="sharp|mild|extra-sharp", prep="cheese",
       brands="Kraft|Cracker Barrel|Tillamook", sizes="(8 oz.)", title="Cheese|Cheddar"),
    _i("mozzarella cheese", "dairy", "cup lb pkg", pre="part-skim|low-moisture", prep="cheese",
       brands="Kraft|Sargento", sizes="(8 oz.)|(16 oz.)", title="Mozzarella|Pizza"),
    _i("parmesan cheese", "dairy", "cup spoon", pre="freshly grated|grated", brands="Kraft",
       title="Parmesan"),
    _i("swiss cheese", "dairy", "cup lb slice", prep="cheese", title="Swiss"),
    _i("monterey jack cheese", "dairy", "cup lb", prep="cheese", title="Monterey Jack"),
    _i("american cheese", "dairy", "slice lb", prep="cheese", brands="Kraft"),
    _i("cheese", "dairy", "cup lb", prep="cheese", brands="Velveeta", title="Cheese|Cheesy"),
    _i("cottage cheese", "dairy", "cup carton", pre="small curd|low-fat|creamed",
       sizes="(16 oz.)|(24 oz.)", title="Cottage Cheese"),
    _i("whipping cream", "dairy", "cup qt", pre="heavy", prep="whip"),
    _i("half-and-half", "dairy", "cup qt"),
    _i("buttermilk", "dairy", "cup", title="Buttermilk"),
    _i("yogurt", "dairy", "cup carton", pre="plain|low-fat|nonfat", sizes="(8 oz.)"),
    _i("vanilla ice cream", "drink", "qt cup", prep="soft", brands="Breyers|Blue Bell",
       title="Ice Cream"),
    # --- meat and fish --------------------------------------------------------------------
    _i("ground beef", "meat", "lb", pre="lean|extra-lean|extra lean", prep="brown",
       title="Beef|Hamburger|Ground Beef"),
    _i("ground turkey", "meat", "lb", pre="lean", prep="brown", title="Turkey"),
    _i("chicken breasts", "meat", "count lb", prep="chicken", singular="chicken breast",
       pre="boneless skinless|boneless, skinless|boneless|split", title="Chicken|Chicken Breast"),
    _i("chicken", "meat", "count lb cup", prep="chicken", plural="chickens", pre="whole|frying",
       sizes="(3 lb.)|(2 1/2 to 3 lb.)|(3 to 4 lb.)", title="Chicken"),
    _i("pork chops", "meat", "count", pre="thick|boneless|center-cut|loin", prep="meat",
       singular="pork chop", title="Pork Chop|Pork Chops"),
    _i("pork roast", "meat", "count lb", prep="meat", sizes="(3 lb.)|(4 to 5 lb.)",
       title="Pork|Pork Roast"),
    _i("ham", "meat", "lb cup slice", pre="fully cooked|smoked", prep="meat", title="Ham"),
    _i("bacon", "meat", "slice lb", pre="thick-sliced|thick", prep="bacon", brands="Oscar Mayer",
       title="Bacon"),
    _i("sausage", "meat", "lb", pre="bulk|pork", prep="brown", brands="Jimmy Dean",
       title="Sausage"),
    _i("smoked sausage", "meat", "lb", prep="meat", brands="Hillshire Farm",
       title="Sausage|Smoked Sausage"),
    _i("turkey", "meat", "cup lb", prep="chicken", title="Turkey"),
    _i("stew meat", "meat", "lb", forms="{}|beef {}", prep="meat", title="Beef|Stew"),
    _i("round steak", "meat", "lb", prep="meat", title="Steak|Swiss Steak"),
    _i("shrimp", "meat", "lb cup", pre="small|medium|large|fresh", prep="shrimp", title="Shrimp"),
    _i("tuna", "meat", "can", pre="water-packed|solid white|chunk light", prep="can",
       brands="StarKist|Bumble Bee", sizes="(6 oz.)|(6 1/2 oz.)|(12 oz.)", title="Tuna"),
    _i("crabmeat", "meat", "cup can lb", pre="lump|fresh|flaked", prep="can", sizes="(6 oz.)",
       title="Crab|Crabmeat"),
    _i("salmon", "meat", "can lb", pre="pink|red", prep="can", sizes="(15 oz.)|(16 oz.)",
       title="Salmon"),
    _i("hot dogs", "meat", "count pkg", singular="hot dog", prep="meat", brands="Oscar Mayer",
       title="Hot Dog|Frankfurter"),
    _i("pepperoni", "meat", "pkg cup", prep="olive", brands="Hormel", sizes="(3 1/2 oz.)",
       title="Pepperoni|Pizza"),
    # --- produce --------------------------------------------------------------------------
    _i("onion", "produce", "count cup", pre="large|medium|small|sweet", prep="chop",
       plural="onions", title="Onion"),
    _i("green onions", "produce", "count cup bunch", prep="green", singular="green onion",
       title="Green Onion"),
    _i("garlic", "produce", "clove spoon", prep="garlic", title="Garlic"),
    _i("celery", "produce", "cup stalk", prep="chop", title="Celery"),
    _i("green pepper", "produce", "count cup", pre="large|medium|small", prep="pepper",
       plural="green peppers", title="Pepper|Green Pepper"),
    _i("red bell pepper", "produce", "count cup", pre="large|medium", prep="pepper",
       plural="red bell peppers", title="Red Pepper"),
    _i("carrots", "produce", "count cup lb", pre="large|medium", prep="root", singular="carrot",
       title="Carrot"),
    _i("potatoes", "produce", "count cup lb", pre="large|medium|small|baking", prep="root",
       singular="potato", title="Potato"),
    _i("sweet potatoes", "produce", "count cup can", pre="large|medium", prep="root",
       singular="sweet potato", sizes="(29 oz.)|(40 oz.)", title="Sweet Potato|Yam"),
    _i("tomatoes", "produce", "count cup can", pre="ripe|large|medium|fresh", prep="pepper",
       singular="tomato", sizes="(28 oz.)|(14 1/2 oz.)|(16 oz.)", title="Tomato"),
    _i("mushrooms", "produce", "cup lb can", pre="fresh|button", prep="chop",
       sizes="(4 oz.)|(8 oz.)", title="Mushroom"),
    _i("broccoli", "produce", "cup bunch pkg", pre="fresh", prep="broccoli",
       sizes="(10 oz.)|(16 oz.)", title="Broccoli"),
    _i("cauliflower", "produce", "head cup", prep="broccoli", title="Cauliflower"),
    _i("cabbage", "produce", "head cup", prep="leafy", title="Cabbage"),
    _i("zucchini", "produce", "count cup", pre="small|medium|large", prep="root",
       title="Zucchini"),
    _i("yellow squash", "produce", "count cup lb", pre="small|medium", prep="root",
       title="Squash"),
    _i("cucumber", "produce", "count", pre="large|medium", prep="root", plural="cucumbers",
       title="Cucumber"),
    _i("lettuce", "produce", "head cup", prep="leafy", title="Lettuce|Layered"),
    _i("spinach", "produce", "lb pkg cup", pre="fresh", prep="leafy", sizes="(10 oz.)",
       title="Spinach"),
    _i("green beans", "produce", "can lb cup", pre="fresh|French-style|cut", prep="can",
       brands="Green Giant|Del Monte", sizes="(14 1/2 oz.)|(16 oz.)", title="Green Bean"),
    _i("corn", "produce", "can cup", pre="whole kernel", prep="can",
       brands="Green Giant|Del Monte", sizes="(15 oz.)|(16 oz.)|(11 oz.)", title="Corn"),
    _i("cream-style corn", "produce", "can", brands="Green Giant|Del Monte",
       sizes="(14 3/4 oz.)|(16 oz.)", title="Corn|Creamed Corn"),
    _i("frozen corn", "produce", "pkg cup", prep="thaw", brands="Green Giant|Birds Eye",
       sizes="(16 oz.)|(10 oz.)", title="Corn"),
    _i("frozen peas", "produce", "pkg cup", prep="thaw", brands="Green Giant|Birds Eye",
       sizes="(10 oz.)|(16 oz.)", title="Pea"),
    _i("frozen mixed vegetables", "produce", "pkg", prep="thaw", brands="Birds Eye",
       sizes="(16 oz.)|(10 oz.)", title="Vegetable"),
    _i("parsley", "produce", "spoon cup bunch", pre="fresh|flat-leaf", prep="herb"),
    _i("cilantro", "produce", "spoon cup bunch", pre="fresh", prep="herb"),
    _i("jalapeno peppers", "produce", "count", pre="fresh", prep="pepper",
       singular="jalapeno pepper", title="Jalapeno"),
    _i("avocados", "produce", "count", pre="ripe|large", prep="mash", singular="avocado",
       title="Avocado|Guacamole"),
    _i("lemon", "fruit", "count", pre="large", prep="lemon", plural="lemons", title="Lemon"),
    _i("apples", "fruit", "count cup", pre="tart|large|medium|cooking", prep="fruit",
       singular="apple", title="Apple"),
    _i("bananas", "fruit", "count cup", pre="ripe|very ripe|medium", prep="mash",
       singular="banana", title="Banana"),
    _i("strawberries", "fruit", "cup qt", pre="fresh", prep="berry", title="Strawberry"),
    _i("frozen strawberries", "fruit", "pkg", prep="thaw", sizes="(10 oz.)|(16 oz.)",
       title="Strawberry"),
    _i("blueberries", "fruit", "cup", pre="fresh", prep="berry", title="Blueberry"),
    _i("peaches", "fruit", "count cup can", pre="fresh|ripe", prep="fruit", singular="peach",
       sizes="(29 oz.)|(16 oz.)", title="Peach"),
    _i("pumpkin", "fruit", "can cup", pre="solid-pack", brands="Libby's",
       sizes="(15 oz.)|(16 oz.)|(29 oz.)", title="Pumpkin"),
    _i("applesauce", "fruit", "cup jar", pre="unsweetened", title="Applesauce"),
    _i("dates", "fruit", "cup pkg", prep="fruit", sizes="(8 oz.)", title="Date"),
    _i("cherry pie filling", "fruit", "can", brands="Comstock|Lucky Leaf", sizes="(21 oz.)",
       title="Cherry|Cherry Cheese"),
    _i("crushed pineapple", "fruit", "can cup", prep="can", brands="Dole|Del Monte",
       sizes="(20 oz.)|(8 oz.)|(15 1/4 oz.)", title="Pineapple"),
    _i("mandarin oranges", "fruit", "can", prep="can", brands="Dole", sizes="(11 oz.)",
       title="Mandarin Orange|Orange"),
    _i("maraschino cherries", "fruit", "jar cup count", prep="cherry",
       singular="maraschino cherry", sizes="(10 oz.)|(6 oz.)", title="Cherry"),
    _i("rhubarb", "fruit", "cup", pre="fresh", prep="rhubarb", title="Rhubarb"),
    # --- canned goods ---------------------------------------------------------------------
    _i("cream of mushroom soup", "canned", "can", prep="soup", brands="Campbell's", sizes=_SOUP),
    _i("cream of chicken soup", "canned", "can", prep="soup", brands="Campbell's", sizes=_SOUP),
    _i("cream of celery soup", "canned", "can", prep="soup", brands="Campbell's", sizes=_SOUP),
    _i("tomato soup", "canned", "can", prep="soup", brands="Campbell's", sizes=_SOUP,
       title="Tomato Soup"),
    _i("tomato sauce", "canned", "can cup", brands="Hunt's|Del Monte", sizes="(8 oz.)|(15 oz.)"),
    _i("tomato paste", "canned", "can spoon", brands="Hunt's|Contadina", sizes="(6 oz.)"),
    _i("stewed tomatoes", "canned", "can", brands="Del Monte|Hunt's", prep="can",
       sizes="(14 1/2 oz.)|(16 oz.)"),
    _i("kidney beans", "canned", "can", pre="red|dark red|light red", prep="can",
       brands="Bush's", sizes="(15 oz.)|(16 oz.)", title="Bean|Kidney Bean"),
    _i("pork and beans", "canned", "can", brands="Van Camp's|Campbell's",
       sizes="(16 oz.)|(28 oz.)", title="Baked Bean|Bean"),
    _i("black beans", "canned", "can", prep="can", brands="Bush's", sizes="(15 oz.)",
       title="Black Bean"),
    _i("green chilies", "canned", "can", prep="can", brands="Old El Paso|Ortega",
       sizes="(4 oz.)|(4 1/2 oz.)", title="Green Chili|Chili"),
    _i("chicken broth", "canned", "can cup", pre="low-sodium|fat-free", brands="Swanson",
       sizes="(14 1/2 oz.)|(10 1/2 oz.)"),
    _i("beef broth", "canned", "can cup", pre="low-sodium", brands="Swanson|Campbell's",
       sizes="(14 1/2 oz.)|(10 1/2 oz.)"),
    _i("water chestnuts", "canned", "can", prep="can", sizes="(8 oz.)"),
    _i("french fried onions", "canned", "can cup", brands="French's|Durkee",
       sizes="(2.8 oz.)|(6 oz.)"),
    _i("black olives", "canned", "can cup", pre="pitted", prep="olive",
       sizes="(2 1/4 oz.)|(6 oz.)", title="Olive"),
    # --- pantry: rice, pasta, crumbs, mixes -----------------------------------------------
    _i("rice", "pantry", "cup", pre="long-grain|instant|white", prep="pasta",
       brands="Minute|Uncle Ben's", title="Rice"),
    _i("macaroni", "pantry", "cup lb pkg", pre="elbow", prep="pasta", sizes="(8 oz.)|(16 oz.)",
       title="Macaroni"),
    _i("spaghetti", "pantry", "lb pkg", pre="thin", prep="pasta", sizes="(16 oz.)|(8 oz.)",
       title="Spaghetti"),
    _i("noodles", "pantry", "pkg cup lb", pre="wide|medium|extra-wide", prep="pasta",
       sizes="(12 oz.)|(8 oz.)", title="Noodle"),
    _i("lasagna noodles", "pantry", "count pkg", prep="pasta", singular="lasagna noodle",
       sizes="(16 oz.)", title="Lasagna"),
    _i("bread crumbs", "pantry", "cup", pre="dry|fine|soft|seasoned", brands="Progresso"),
    _i("crackers", "pantry", "cup count pkg", pre="saltine|butter", prep="crumb", brands="Ritz",
       singular="cracker", title="Cracker"),
    _i("corn flakes", "pantry", "cup", prep="crumb", brands="Kellogg's"),
    _i("bread", "pantry", "slice loaf", pre="day-old|white|stale", prep="bread", title="Bread"),
    _i("tortillas", "pantry", "count pkg", pre="flour|corn|large", singular="tortilla",
       title="Tortilla|Burrito"),
    _i("onion soup mix", "pantry", "env", pre="dry", brands="Lipton", sizes="(1 oz.)"),
    _i("taco seasoning", "pantry", "env", forms="{}|{} mix", brands="Old El Paso|Ortega",
       sizes="(1 1/4 oz.)|(1 oz.)", title="Taco"),
    _i("ranch dressing mix", "pantry", "env", brands="Hidden Valley", sizes="(1 oz.)",
       title="Ranch"),
    _i("water", "pantry", "cup", prep="liquid"),
    _i("coffee", "drink", "cup", pre="strong|brewed|strong brewed", prep="liquid",
       title="Coffee|Mocha"),
    # --- sauces and condiments ------------------------------------------------------------
    _i("ketchup", "sauce", "cup spoon", alts="chili sauce", brands="Heinz"),
    _i("mustard", "sauce", "spoon", pre="prepared|yellow", brands="French's"),
    _i("mayonnaise", "sauce", "cup spoon", pre="light|reduced-fat",
       brands="Hellmann's|Kraft|Duke's", alts="salad dressing"),
    _i("vinegar", "sauce", "cup spoon", pre="white|distilled"),
    _i("cider vinegar", "sauce", "spoon cup", brands="Heinz"),
    _i("soy sauce", "sauce", "spoon cup", pre="low-sodium|light", brands="Kikkoman|La Choy"),
    _i("worcestershire sauce", "sauce", "tsp spoon", brands="Lea & Perrins"),
    _i("hot sauce", "sauce", "tsp pinch", brands="Tabasco|Frank's"),
    _i("barbecue sauce", "sauce", "cup jar", brands="KC Masterpiece|Kraft", sizes="(18 oz.)",
       title="Barbecue|BBQ"),
    _i("italian dressing", "sauce", "cup jar", brands="Wish-Bone|Kraft",
       sizes="(8 oz.)|(16 oz.)", title="Italian"),
    _i("pickle relish", "sauce", "spoon cup", pre="sweet|dill"),
    _i("salsa", "sauce", "cup jar", pre="thick and chunky|mild|medium", brands="Pace",
       sizes="(16 oz.)", title="Salsa|Mexican"),
    _i("picante sauce", "sauce", "cup jar", pre="mild|medium", brands="Pace", sizes="(16 oz.)",
       title="Picante|Tex-Mex"),
    # --- savoury spices -------------------------------------------------------------------
    _i("salt", "spice", "spoon spoon pinch taste", brands="Morton"),
    _i("pepper", "spice", "spoon pinch taste", pre="freshly ground|coarsely ground"),
    _i("garlic powder", "spice", "spoon pinch", brands="McCormick|Lawry's"),
    _i("onion powder", "spice", "spoon pinch", brands="McCormick"),
    _i("chili powder", "spice", "spoon", brands="McCormick|Gebhardt"),
    _i("paprika", "spice", "spoon pinch", pre="sweet|smoked", brands="McCormick"),
    _i("oregano", "spice", "spoon pinch", pre="dried|dry", forms="{}|{}|{} leaves"),
    _i("basil", "spice", "spoon", pre="dried|dry|fresh", forms="{}|{}|{} leaves"),
    _i("thyme", "spice", "spoon pinch", pre="dried|dry|ground", forms="{}|{}|{} leaves"),
    _i("cumin", "spice", "spoon pinch", pre="ground"),
    _i("bay leaf", "spice", "count", plural="bay leaves", pre="dried|large"),
    _i("seasoned salt", "spice", "spoon", brands="Lawry's|Morton"),
    _i("celery seed", "spice", "spoon"),
    _i("parsley flakes", "spice", "spoon", pre="dried|dry"),
    _i("dill weed", "spice", "spoon", pre="dried|dry"),
    _i("italian seasoning", "spice", "spoon", pre="dried", brands="McCormick"),
    _i("cayenne pepper", "spice", "spoon pinch", pre="ground"),
    _i("sage", "spice", "spoon pinch", pre="rubbed|ground|dried"),
    _i("rosemary", "spice", "spoon", pre="dried|fresh"),
    _i("poultry seasoning", "spice", "spoon"),
    _i("dry mustard", "spice", "spoon"),
    _i("lemon pepper", "spice", "spoon", brands="Lawry's|McCormick"),
    # --- sweet spices ---------------------------------------------------------------------
    _i("cinnamon", "sweetspice", "spoon pinch", pre="ground", brands="McCormick",
       title="Cinnamon"),
    _i("nutmeg", "sweetspice", "spoon pinch", pre="ground|freshly grated", brands="McCormick"),
    _i("ginger", "sweetspice", "spoon pinch", pre="ground", title="Ginger|Gingerbread"),
    _i("cloves", "sweetspice", "spoon pinch", pre="ground"),
    _i("allspice", "sweetspice", "spoon pinch", pre="ground"),
    _i("pumpkin pie spice", "sweetspice", "spoon", brands="McCormick"),
    # --- nuts -----------------------------------------------------------------------------
    _i("pecans", "nuts", "cup", pre="pecan halves|broken", prep="nut", alts="walnuts",
       title="Pecan"),
    _i("walnuts", "nuts", "cup", prep="nut", alts="pecans", title="Walnut"),
    _i("almonds", "nuts", "cup", pre="slivered|sliced|blanched", prep="nut", title="Almond"),
    _i("peanuts", "nuts", "cup", pre="dry-roasted|salted|unsalted", prep="nut", title="Peanut"),
    _i("peanut butter", "nuts", "cup spoon", pre="creamy|crunchy|chunky",
       brands="Jif|Skippy|Peter Pan", title="Peanut Butter"),
    # --- drinks ---------------------------------------------------------------------------
    _i("ginger ale", "drink", "qt jar cup", pre="chilled|cold", brands="Canada Dry|Schweppes",
       sizes="(2 liter)|(1 liter)|(28 oz.)", title="Ginger Ale"),
    _i("pineapple juice", "drink", "can cup", pre="unsweetened|chilled", brands="Dole",
       sizes="(46 oz.)|(12 oz.)", title="Pineapple"),
    _i("orange juice", "drink", "cup can", pre="fresh|chilled", forms="{}|{}|{} concentrate",
       brands="Minute Maid|Tropicana", sizes="(6 oz.)|(12 oz.)", title="Orange"),
    _i("lemonade concentrate", "drink", "can", pre="pink", brands="Minute Maid",
       sizes="(6 oz.)|(12 oz.)", title="Lemonade|Pink Lemonade"),
    _i("cranberry juice", "drink", "cup qt jar", forms="{}|{} cocktail", brands="Ocean Spray",
       sizes="(48 oz.)|(32 oz.)", title="Cranberry"),
    _i("lime sherbet", "drink", "qt", prep="soft", title="Sherbet|Lime Sherbet"),
    _i("tea bags", "drink", "count", pre="family-size|regular", singular="tea bag",
       brands="Lipton|Luzianne", title="Tea|Iced Tea"),
)

# Names that compete for one slot: a recipe with both reads as a mistake, not as variety.
_CONFLICTS: tuple[frozenset[str], ...] = (
    frozenset({"oil", "vegetable oil", "olive oil"}),
    frozenset({"chicken", "chicken breasts", "turkey"}),
    frozenset({"ground beef", "stew meat", "round steak", "ground turkey"}),
    frozenset({"yellow cake mix", "white cake mix"}),
    frozenset({"strawberries", "frozen strawberries"}),
    frozenset({"corn", "frozen corn"}),
    frozenset({"nuts", "pecans", "walnuts"}),
    frozenset({"cheese", "american cheese"}),
    frozenset({"sausage", "smoked sausage"}),
    frozenset({"salsa", "picante sauce"}),
)

# Preparation written before the food ("chopped pecans") or after it (", chopped"); dropped.
# "crushed" only ever appears after a comma so that it never competes with "crushed pineapple".
_PREP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "": ((), ()),
    "chop": (
        ("chopped", "diced", "finely chopped", "minced", "coarsely chopped", "sliced"),
        (", chopped", ", diced", ", finely chopped", ", sliced", ", cut up", ", thinly sliced",
         ", coarsely chopped", ", minced"),
    ),
    "pepper": (
        ("chopped", "diced", "finely chopped"),
        (", seeded and chopped", ", chopped", ", cut into strips", ", diced", ", seeded and diced"),
    ),
    "green": (
        ("chopped", "sliced", "thinly sliced"),
        (", chopped", ", sliced", ", chopped (including tops)", ", thinly sliced"),
    ),
    "root": (
        ("diced", "sliced", "shredded", "grated", "cubed", "peeled and diced"),
        (", peeled and cubed", ", peeled and diced", ", sliced", ", shredded",
         ", cut into 1-inch pieces", ", grated", ", pared and sliced", ", quartered"),
    ),
    "broccoli": (
        ("chopped",),
        (", cut into florets", ", chopped", ", broken into florets", ", cooked and drained"),
    ),
    "leafy": (
        ("shredded", "chopped"),
        (", shredded", ", torn into bite-size pieces", ", washed and torn", ", chopped",
         ", thawed and squeezed dry"),
    ),
    "herb": (("chopped", "minced", "snipped"), (", chopped", ", minced", ", snipped")),
    "garlic": (
        ("minced", "finely minced", "pressed"),
        (", minced", ", crushed", ", finely chopped", ", pressed", ", peeled and minced"),
    ),
    "cheese": (
        ("shredded", "grated", "cubed"),
        (", shredded", ", grated", ", cubed", ", cut into cubes", ", divided"),
    ),
    "soft": (("softened",), (", softened", ", at room temperature", ", cubed")),
    "fat": (
        ("melted", "softened", "cold", "chilled"),
        (", melted", ", softened", ", at room temperature", ", divided", ", cut into pieces",
         ", cut up"),
    ),
    "nut": (
        ("chopped", "finely chopped", "coarsely chopped", "toasted"),
        (", chopped", ", toasted", ", finely chopped", ", broken"),
    ),
    "plump": (("chopped",), (", plumped in hot water", ", chopped")),
    "meat": (
        ("cooked", "cubed", "diced"),
        (", cut into 1-inch pieces", ", cubed", ", cut into bite-size pieces", ", trimmed",
         ", cut into strips", ", cooked and cubed"),
    ),
    "chicken": (
        ("cooked", "cubed", "diced"),
        (", cut up", ", cooked and diced", ", skinned", ", cut into bite-size pieces",
         ", cooked and cubed", ", cooked and deboned"),
    ),
    "brown": ((), (", browned and drained", ", browned", ", crumbled", ", cooked and drained")),
    "bacon": (
        ("crumbled", "diced"),
        (", cooked and crumbled", ", diced", ", fried crisp and crumbled", ", cut into pieces"),
    ),
    "shrimp": (("cooked",), (", peeled and deveined", ", cooked and peeled", ", cleaned")),
    "egg": (
        ("beaten", "well beaten", "slightly beaten"),
        (", beaten", ", well beaten", ", slightly beaten", ", separated", ", at room temperature",
         ", lightly beaten"),
    ),
    "eggwhite": (("stiffly beaten",), (", stiffly beaten", ", at room temperature")),
    "can": (
        (),
        (", drained", ", undrained", ", drained and rinsed", ", with juice",
         ", rinsed and drained"),
    ),
    "soup": (("undiluted",), (", undiluted",)),
    "thaw": (("thawed",), (", thawed", ", thawed and drained", ", partially thawed")),
    "fruit": (
        ("sliced", "chopped"),
        (", peeled and sliced", ", peeled, cored and sliced", ", chopped", ", pitted and sliced",
         ", halved", ", sliced"),
    ),
    "mash": (("mashed",), (", mashed", ", peeled and mashed", ", sliced")),
    "berry": (
        ("sliced",),
        (", hulled and sliced", ", washed and hulled", ", sliced", ", rinsed and drained"),
    ),
    "cherry": (("chopped", "halved"), (", halved", ", drained", ", chopped")),
    "lemon": ((), (", juiced", ", sliced", ", thinly sliced", ", cut into wedges")),
    "rhubarb": (("diced",), (", cut into 1/2-inch pieces", ", diced")),
    "crumb": ((), (", crushed", ", finely crushed", ", crumbled")),
    "bread": (("cubed",), (", cubed", ", torn into pieces", ", crusts removed", ", toasted")),
    "sift": (("sifted",), (", sifted", ", divided")),
    "sugar": ((), (", divided",)),
    "pasta": (
        ("uncooked", "cooked"),
        (", cooked and drained", ", cooked", ", uncooked", ", broken into pieces"),
    ),
    "liquid": (
        ("cold", "warm", "hot", "boiling", "lukewarm"),
        (", divided", ", scalded", ", at room temperature"),
    ),
    "whip": (("chilled",), (", whipped", ", chilled")),
    "melt": (("melted",), (", melted", ", chopped")),
    "olive": (("sliced", "chopped"), (", sliced", ", drained", ", chopped")),
}
# fmt: on

_BY_NAME: dict[str, _Ingredient] = {ing.name: ing for ing in _INGREDIENTS}
_BY_CAT: dict[str, list[_Ingredient]] = {}
for _ing in _INGREDIENTS:
    _BY_CAT.setdefault(_ing.cat, []).append(_ing)

# Brands as written in the lines. Public so tests and docs can check none leaks into an answer.
BRANDS: tuple[str, ...] = tuple(sorted({b for ing in _INGREDIENTS for b in ing.brands}))


@dataclass(frozen=True)
class _Kind:
    """A kind of recipe: which ingredients lead, which come along, and how titles read."""

    weight: float
    mains: tuple[str, ...]
    seconds: tuple[str, ...]  # second title ingredient: "Chicken And Rice Casserole"
    dishes: tuple[str, ...]
    prefixes: tuple[str, ...]
    pool: tuple[tuple[str, float], ...]  # (category, weight) for the supporting ingredients
    staples: tuple[tuple[str, float], ...]  # (name, probability), tried before the pool
    size: tuple[int, int]  # ingredient lines, inclusive


# fmt: off
_COMMON_PREFIXES = (
    "Easy", "Quick", "Best", "Favorite", "Old-Fashioned", "Simple", "Deluxe", "Super",
    "Quick And Easy", "Company", "Homemade", "Southern", "Country", "Low-Fat", "Holiday",
)
_OWNERS = (
    "Grandma", "Mom", "Nana", "Granny", "Mother", "Aunt Mary", "Aunt Bea", "Uncle Joe", "Betty",
    "Ruth", "Helen", "Dot", "Marge", "Edna", "Lois", "Jean", "Pat", "Ann", "Shirley", "Carol",
    "Bev", "Aunt Sue", "Grandma Rose", "Mrs. Smith", "Ida", "Hazel", "Opal", "Mabel",
)

_KINDS: tuple[_Kind, ...] = (
    _Kind(  # main dishes
        weight=0.31,
        mains=("ground beef", "chicken breasts", "chicken", "pork chops", "ham", "sausage",
               "smoked sausage", "turkey", "ground turkey", "stew meat", "round steak", "shrimp",
               "tuna", "crabmeat", "salmon", "hot dogs", "pork roast", "pepperoni"),
        seconds=("rice", "noodles", "macaroni", "potatoes", "broccoli", "spaghetti", "cabbage",
                 "green beans", "corn", "mushrooms", "cheddar cheese", "kidney beans",
                 "tortillas", "green chilies", "barbecue sauce", "bacon", "sour cream"),
        dishes=("Casserole", "Bake", "Skillet", "Stew", "Chili", "Hot Dish", "Supreme",
                "Pot Pie", "Stir-Fry", "Soup", "Goulash", "Stroganoff", "Loaf", "Enchiladas",
                "Lasagna", "Dinner", "Delight", "Pie", "Tetrazzini", "Divan", "Chowder",
                "Burritos", "Bake Supreme", "Roll-Ups", "Pasta", "Sandwiches", "Patties"),
        prefixes=_COMMON_PREFIXES + ("Baked", "Creamy", "Cheesy", "Spicy", "Hearty", "Crock-Pot",
                                     "Oven", "Mexican", "Italian", "Texas", "Cajun", "Saucy"),
        pool=(("produce", 3.0), ("canned", 2.2), ("spice", 3.0), ("sauce", 1.5),
              ("dairy", 1.5), ("pantry", 1.6), ("meat", 0.3)),
        staples=(("salt", 0.55), ("pepper", 0.5), ("onion", 0.5), ("garlic", 0.25),
                 ("butter", 0.15), ("flour", 0.12), ("oil", 0.12), ("water", 0.18),
                 ("milk", 0.12), ("eggs", 0.12)),
        size=(4, 12),
    ),
    _Kind(  # side dishes, salads and soups
        weight=0.17,
        mains=("broccoli", "potatoes", "green beans", "corn", "cabbage", "zucchini", "spinach",
               "carrots", "sweet potatoes", "cauliflower", "rice", "macaroni", "cucumber",
               "tomatoes", "mushrooms", "cream-style corn", "frozen peas", "kidney beans",
               "black beans", "lettuce", "onion", "yellow squash", "pork and beans",
               "frozen mixed vegetables", "noodles"),
        seconds=("cheddar cheese", "bacon", "ham", "rice", "tomatoes", "onion", "cheese",
                 "sour cream", "mushrooms", "green pepper", "swiss cheese", "parmesan cheese"),
        dishes=("Casserole", "Salad", "Soup", "Bake", "Au Gratin", "Supreme", "Medley",
                "Fritters", "Slaw", "Pudding", "Saute", "Puff", "Souffle", "Bisque", "Relish",
                "Side Dish", "Marinated Salad", "Pasta Salad", "Skillet"),
        prefixes=_COMMON_PREFIXES + ("Baked", "Creamy", "Cheesy", "Scalloped", "Marinated",
                                     "Fresh", "Garden", "Summer", "Layered", "Hot", "German"),
        pool=(("produce", 3.0), ("canned", 1.6), ("dairy", 2.0), ("spice", 3.0),
              ("sauce", 2.0), ("pantry", 1.2), ("meat", 0.4)),
        staples=(("salt", 0.5), ("pepper", 0.45), ("butter", 0.25), ("onion", 0.35),
                 ("sugar", 0.15), ("mayonnaise", 0.12)),
        size=(3, 11),
    ),
    _Kind(  # baked desserts
        weight=0.26,
        mains=("pecans", "peanut butter", "chocolate chips", "cocoa", "bananas", "apples",
               "pumpkin", "coconut", "oats", "lemon juice", "strawberries", "blueberries",
               "cherry pie filling", "zucchini", "carrots", "raisins", "walnuts",
               "sweet potatoes", "applesauce", "dates", "rhubarb", "butterscotch chips",
               "chocolate", "peaches", "molasses", "cream cheese", "yellow cake mix",
               "white cake mix", "caramels", "honey", "almonds", "sour cream", "buttermilk",
               "brown sugar", "crushed pineapple", "ginger"),
        seconds=("chocolate chips", "oats", "pecans", "coconut", "raisins", "walnuts",
                 "peanut butter", "cream cheese", "sour cream", "cocoa", "cinnamon",
                 "butterscotch chips", "caramels", "bananas", "crushed pineapple"),
        dishes=("Cookies", "Cake", "Pie", "Bars", "Bread", "Muffins", "Cobbler", "Squares",
                "Brownies", "Pound Cake", "Sheet Cake", "Crisp", "Coffee Cake", "Fudge",
                "Candy", "Pudding", "Delight", "Dessert", "Cheesecake", "Crunch", "Torte",
                "Drop Cookies", "Cupcakes", "Upside-Down Cake", "Roll", "Tarts", "Bundt Cake",
                "Dump Cake", "Balls", "Chews"),
        prefixes=_COMMON_PREFIXES + ("No-Bake", "Moist", "Chewy", "Soft", "Frosted", "Glazed",
                                     "Fresh", "Double", "Heavenly", "Million Dollar",
                                     "Mississippi", "German", "Texas", "Amish", "Crunchy"),
        pool=(("baking", 4.0), ("dairy", 2.0), ("nuts", 1.6), ("fruit", 1.0),
              ("sweetspice", 1.8), ("dessert", 1.0)),
        staples=(("flour", 0.8), ("sugar", 0.65), ("eggs", 0.65), ("butter", 0.45),
                 ("margarine", 0.15), ("baking soda", 0.45), ("baking powder", 0.3),
                 ("salt", 0.5), ("vanilla", 0.5), ("milk", 0.25)),
        size=(4, 12),
    ),
    _Kind(  # no-bake and gelatin desserts and "salads"
        weight=0.08,
        mains=("strawberry gelatin", "lime gelatin", "orange gelatin", "instant vanilla pudding",
               "instant chocolate pudding", "instant pistachio pudding", "cream cheese",
               "crushed pineapple", "mandarin oranges", "cherry pie filling", "strawberries",
               "frozen strawberries", "bananas", "whipped topping", "condensed milk",
               "cottage cheese", "marshmallows", "pretzels", "graham cracker crumbs",
               "maraschino cherries"),
        seconds=("crushed pineapple", "cream cheese", "bananas", "marshmallows", "pecans",
                 "cottage cheese", "mandarin oranges", "pretzels", "coconut"),
        dishes=("Salad", "Delight", "Dessert", "Fluff", "Pie", "Parfait", "Mold", "Squares",
                "Torte", "Ambrosia", "Pudding", "Surprise", "Trifle", "Icebox Cake",
                "Refrigerator Dessert", "Freeze", "Congealed Salad", "Cream Pie"),
        prefixes=_COMMON_PREFIXES + ("No-Bake", "Frozen", "Heavenly", "Fluffy", "Layered",
                                     "Frosty", "Light", "Church Supper", "Easter", "Sunday"),
        pool=(("dessert", 3.0), ("fruit", 3.0), ("dairy", 2.0), ("nuts", 1.0),
              ("baking", 1.0)),
        staples=(("whipped topping", 0.35), ("sugar", 0.3), ("pecans", 0.2), ("water", 0.2)),
        size=(3, 9),
    ),
    _Kind(  # dips, spreads and appetizers
        weight=0.08,
        mains=("cream cheese", "sour cream", "cheddar cheese", "spinach", "shrimp", "crabmeat",
               "sausage", "ham", "black olives", "salsa", "avocados", "onion soup mix",
               "ranch dressing mix", "kidney beans", "mushrooms", "pepperoni",
               "jalapeno peppers", "cheese", "tuna", "green chilies", "hot dogs"),
        seconds=("cheddar cheese", "bacon", "green onions", "cream cheese", "sour cream",
                 "pecans", "salsa", "crabmeat", "green chilies"),
        dishes=("Dip", "Spread", "Cheese Ball", "Appetizers", "Bites", "Roll-Ups", "Squares",
                "Balls", "Puffs", "Snack", "Log", "Pinwheels", "Party Dip", "Canapes",
                "Hors D'Oeuvres", "Tarts"),
        prefixes=_COMMON_PREFIXES + ("Hot", "Cold", "Party", "Spicy", "Creamy", "Layered",
                                     "Mexican", "Texas", "Super Bowl", "Cocktail", "Baked"),
        pool=(("dairy", 3.0), ("sauce", 2.0), ("spice", 2.0), ("produce", 2.0),
              ("canned", 1.0), ("meat", 0.8), ("pantry", 0.6)),
        staples=(("worcestershire sauce", 0.2), ("garlic powder", 0.2), ("green onions", 0.2)),
        size=(3, 9),
    ),
    _Kind(  # breads
        weight=0.07,
        mains=("yeast", "cornmeal", "buttermilk", "bananas", "zucchini", "pumpkin",
               "cheddar cheese", "oats", "blueberries", "sweet potatoes", "cinnamon",
               "baking mix", "raisins", "apples", "dates", "honey", "sour cream",
               "cranberry juice", "lemon juice", "coffee", "pecans", "walnuts", "molasses",
               "potatoes"),
        seconds=("pecans", "walnuts", "raisins", "cheddar cheese", "honey", "oats", "dates",
                 "cinnamon", "bananas"),
        dishes=("Bread", "Rolls", "Biscuits", "Muffins", "Pancakes", "Waffles", "Loaf", "Buns",
                "Scones", "Sweet Rolls", "Quick Bread", "Coffee Cake", "Cornbread", "Doughnuts",
                "Crescents", "Fritters", "Tea Bread", "Sticky Buns"),
        prefixes=_COMMON_PREFIXES + ("Fluffy", "Light", "Whole Wheat", "Refrigerator",
                                     "Overnight", "Never-Fail", "Sunday", "Hot", "Glazed"),
        pool=(("baking", 4.0), ("dairy", 2.0), ("sweetspice", 1.5), ("nuts", 1.0),
              ("fruit", 1.0)),
        staples=(("flour", 0.9), ("salt", 0.7), ("sugar", 0.6), ("eggs", 0.55), ("milk", 0.45),
                 ("baking powder", 0.45), ("butter", 0.35), ("shortening", 0.2),
                 ("oil", 0.15)),
        size=(4, 11),
    ),
    _Kind(  # drinks
        weight=0.03,
        mains=("ginger ale", "pineapple juice", "orange juice", "lemonade concentrate",
               "cranberry juice", "lime sherbet", "strawberries", "bananas", "tea bags",
               "coffee", "vanilla ice cream", "frozen strawberries"),
        seconds=("pineapple juice", "orange juice", "ginger ale", "lime sherbet",
                 "cranberry juice", "bananas"),
        dishes=("Punch", "Slush", "Shake", "Cooler", "Smoothie", "Float", "Frappe", "Wassail",
                "Drink", "Sparkle", "Fizz", "Tea"),
        prefixes=("Easy", "Best", "Holiday", "Party", "Wedding", "Summer", "Christmas",
                  "Frosty", "Sparkling", "Hot", "Spiced", "Fruit", "Golden", "Ruby"),
        pool=(("drink", 4.0), ("fruit", 2.0), ("baking", 0.8), ("dairy", 0.6),
              ("sweetspice", 0.6)),
        staples=(("sugar", 0.4), ("water", 0.35)),
        size=(3, 7),
    ),
)
# fmt: on

# RecipeNLG-like line-count distribution: most recipes have 5-10 ingredients.
_SIZE_WEIGHTS = {3: 3, 4: 6, 5: 9, 6: 11, 7: 12, 8: 11, 9: 10, 10: 8, 11: 6, 12: 5}

# --------------------------------------------------------------------------------------------
# Quantities and units
# --------------------------------------------------------------------------------------------

# Repeats weight the common amounts; each unit has its own plausible quantities (no "1/8 c.").
# fmt: off
_CUP_Q = ("1", "1", "1", "2", "2", "3", "4", "1/2", "1/2", "1/2", "1/3", "2/3", "1/4", "3/4",
          "3/4", "1 1/2", "1 1/4", "2 1/2", "1 1/3", "1 to 1 1/2", "2 to 3", "1/2 to 3/4")
_TSP_Q = ("1", "1", "1", "1/2", "1/2", "1/2", "1/4", "1/4", "1/8", "3/4", "2", "1 1/2",
          "1/2 to 1", "1 to 2", "3")
_TBSP_Q = ("1", "1", "1", "2", "2", "3", "4", "1/2", "1 1/2", "2 to 3", "1 to 2", "6")
_LB_Q = ("1", "1", "1", "2", "2", "3", "1/2", "1/4", "1 1/2", "2 1/2", "1 to 1 1/2",
         "2 to 3", "3 to 4")
_OZ_Q = ("4", "6", "8", "8", "10", "12", "16")
_COUNT_Q = ("1", "1", "1", "2", "2", "2", "3", "3", "4", "5", "6", "8", "10", "12", "2 to 3",
            "3 to 4", "4 to 6")
_SMALL_Q = ("1", "1", "1", "2", "2", "3")
_CUP_UNITS = ("c.", "c.", "c.", "c.", "C.", "cup")
_TSP_UNITS = ("tsp.", "tsp.", "tsp.", "tsp.", "t.", "teaspoon", "tsp")
_TBSP_UNITS = ("Tbsp.", "Tbsp.", "Tbsp.", "tbsp.", "T.", "tablespoon", "Tbs.")
_CONTAINER_UNITS = {
    "can": ("can",),
    "pkg": ("pkg.", "pkg.", "package", "box"),
    "jar": ("jar", "bottle"),
    "carton": ("carton", "container", "tub"),
}
_DEFAULT_SIZES = {
    "can": ("(15 oz.)", "(16 oz.)", "(8 oz.)", "(14 1/2 oz.)"),
    "pkg": ("(8 oz.)", "(10 oz.)", "(12 oz.)", "(16 oz.)"),
    "jar": ("(16 oz.)", "(8 oz.)", "(12 oz.)"),
    "carton": ("(8 oz.)", "(16 oz.)"),
}
# Fixed phrasings for measures that are really idioms rather than number + unit.
_FIXED = {
    "pinch": ("dash", "pinch", "dash of", "pinch of", "1 dash", "a dash of", "a pinch of",
              "2 dashes"),
    "stick": ("1 stick", "2 sticks", "1/2 stick", "1/2 c. (1 stick)", "1 c. (2 sticks)",
              "1/4 c. (1/2 stick)"),
    "loaf": ("1 loaf", "1/2 loaf", "1 (1 lb.) loaf"),
    "bunch": ("1 bunch", "1 small bunch", "1 large bunch", "2 bunches"),
    "head": ("1 head", "1 small head", "1 medium head", "1 large head", "1/2 head"),
    "qt": ("1 qt.", "2 qt.", "1 pt.", "1/2 gal.", "1 quart", "1/2 pt.", "2 quarts"),
    "sq": ("1 sq.", "2 sq.", "4 sq.", "2 (1 oz.) squares", "3 squares", "6 oz."),
}
# fmt: on
# Words that say how big a counted thing is: they lead the line ("3 large eggs, beaten").
_SIZE_WORDS = frozenset({"large", "medium", "small", "extra-large"})
_MEASURES = frozenset(
    {"cup", "tsp", "spoon", "taste", "lb", "env", "slice", "clove", "stalk", "count"}
    | set(_CONTAINER_UNITS)
    | set(_FIXED)
)

for _kind in _KINDS:  # fail at import, not mid-generation, if the tables drift apart
    for _name in (*_kind.mains, *_kind.seconds, *(n for n, _ in _kind.staples)):
        if _name not in _BY_NAME:
            raise RuntimeError(f"demo tables: unknown ingredient {_name!r}")
    for _cat, _ in _kind.pool:
        if _cat not in _BY_CAT:
            raise RuntimeError(f"demo tables: unknown category {_cat!r}")
for _ing in _INGREDIENTS:
    if _ing.prep not in _PREP or not set(_ing.measures) <= _MEASURES:
        raise RuntimeError(f"demo tables: bad preparation or measure for {_ing.name!r}")
