//! The demo catalog (`--demo`): six categories, 1,000 plausible products (`demo_products`), a
//! demo admin and a demo shopper; for runs at scale, also `demo_orders` orders placed by demo
//! buyers. Written through commands like every write (submitted in large batches), only into
//! an empty store. The catalog and the orders are the same on every run (a fixed
//! pseudo-random sequence); the passwords are new and are kept beside the store so later
//! starts can print them again.

use std::path::Path;

use std::time::Instant;

use rust_decimal::Decimal;
use store::{Command, CommandOutcome, NewProduct, NewUser, OrderLine, OrderLines};
use tokio::task::JoinSet;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::startup::NodeError;
use crate::state::AppState;
use std::sync::Arc;

/// Commands submitted at once while seeding (the writer batches them into few commits).
const SUBMIT_CHUNK: usize = 20_000;
/// Orders per demo buyer when the demo places orders.
const ORDERS_PER_BUYER: usize = 1000;
const CREDENTIALS_FILE: &str = "demo-credentials.txt";
const ADMIN: &str = "demo-admin";
const SHOPPER: &str = "demo-shopper";
const BUYER_PREFIX: &str = "demo-buyer-";

/// A category and the words its product names are made of.
struct Shelf {
    name: &'static str,
    brands: &'static [&'static str],
    items: &'static [&'static str],
    variants: &'static [&'static str],
    price_range: (u32, u32),
}

const SHELVES: [Shelf; 6] = [
    Shelf {
        name: "Merch",
        brands: &[
            "Soundwave",
            "Backline",
            "Riff Raff",
            "Encore",
            "Feedback Loop",
        ],
        items: &[
            "Tour T-Shirt",
            "Hoodie",
            "Tote Bag",
            "Poster",
            "Cap",
            "Enamel Pin",
            "Patch Set",
        ],
        variants: &[
            "Black",
            "White",
            "Vintage Wash",
            "Limited Edition",
            "XL",
            "Glow",
        ],
        price_range: (5, 80),
    },
    Shelf {
        name: "Musical Instruments",
        brands: &[
            "Fender", "Gibson", "Yamaha", "Ibanez", "Roland", "Korg", "Pearl", "Martin",
        ],
        items: &[
            "Electric Guitar",
            "Acoustic Guitar",
            "Bass Guitar",
            "Digital Piano",
            "Synthesizer",
            "Drum Kit",
            "Violin",
            "Ukulele",
            "Trumpet",
            "Saxophone",
        ],
        variants: &[
            "Sunburst", "Natural", "Black", "Studio", "Standard", "Deluxe", "Custom",
        ],
        price_range: (120, 3500),
    },
    Shelf {
        name: "Musical Equipment",
        brands: &[
            "Shure",
            "Marshall",
            "Focusrite",
            "Boss",
            "Audio-Technica",
            "Behringer",
            "Neumann",
        ],
        items: &[
            "Dynamic Microphone",
            "Condenser Microphone",
            "Guitar Amplifier",
            "Audio Interface",
            "Effects Pedal",
            "Studio Monitor",
            "Mixer",
            "Headphones",
            "DI Box",
        ],
        variants: &[
            "MkII", "Pro", "Compact", "2x12", "USB-C", "Stereo", "Classic",
        ],
        price_range: (40, 1800),
    },
    Shelf {
        name: "Vinyl Records",
        brands: &[
            "Blue Note",
            "Motown",
            "Sub Pop",
            "Warp",
            "Rough Trade",
            "Stax",
            "4AD",
        ],
        items: &[
            "Live at the Roundhouse",
            "Midnight Sessions",
            "Greatest Hits",
            "Debut LP",
            "Remastered Classics",
            "B-Sides and Rarities",
            "Soundtrack",
        ],
        variants: &[
            "180g",
            "Double LP",
            "Colored Vinyl",
            "First Press",
            "Gatefold",
            "Picture Disc",
        ],
        price_range: (18, 90),
    },
    Shelf {
        name: "Disks",
        brands: &[
            "Columbia", "Island", "Virgin", "Atlantic", "Nonesuch", "ECM",
        ],
        items: &[
            "Anthology CD",
            "Live CD",
            "Studio Album CD",
            "Box Set",
            "SACD",
            "Blu-ray Concert",
        ],
        variants: &[
            "Remastered",
            "Deluxe",
            "Import",
            "Digipak",
            "Anniversary",
            "Bonus Tracks",
        ],
        price_range: (8, 120),
    },
    Shelf {
        name: "Accessories",
        brands: &[
            "D'Addario",
            "Ernie Ball",
            "Dunlop",
            "Planet Waves",
            "Vic Firth",
            "Hercules",
        ],
        items: &[
            "Guitar Strings",
            "Picks",
            "Capo",
            "Guitar Strap",
            "Drumsticks",
            "Instrument Cable",
            "Tuner",
            "Guitar Stand",
            "Gig Bag",
        ],
        variants: &[
            "Light Gauge",
            "12-Pack",
            "10 ft",
            "Leather",
            "Maple",
            "Clip-On",
            "Padded",
        ],
        price_range: (3, 150),
    },
];

/// splitmix64: a fixed, well-mixed sequence so the demo catalog is the same every time.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }

    fn between(&mut self, low: u32, high: u32) -> u32 {
        low + (self.next() % u64::from(high - low + 1)) as u32
    }
}

/// `count` demo products for categories with the given ids (in `SHELVES` order), each with
/// `extra_stock` more units than the demo would give it (room for the demo's orders).
pub fn demo_products(category_ids: &[u64], count: usize, extra_stock: u32) -> Vec<NewProduct> {
    let mut sequence = Sequence(0x5EED_CAFE);
    (0..count)
        .map(|n| {
            let shelf_index = n % SHELVES.len();
            let shelf = &SHELVES[shelf_index];
            let name = format!(
                "{} {} {} #{}",
                sequence.pick(shelf.brands),
                sequence.pick(shelf.items),
                sequence.pick(shelf.variants),
                n + 1
            );
            let (low, high) = shelf.price_range;
            let cents = [0, 49, 95, 99][(sequence.next() % 4) as usize];
            let price = Decimal::new(i64::from(sequence.between(low, high)) * 100 + cents, 2);
            NewProduct {
                description: format!(
                    "{name}, from the {} shelf of the Soundwave demo catalog.",
                    shelf.name
                ),
                name,
                stock: sequence.between(0, 60).saturating_add(extra_stock),
                price,
                category: category_ids[shelf_index],
            }
        })
        .collect()
}

fn random_password() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    Ok(crate::random::random_bytes(16)?
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Submits the commands, up to `SUBMIT_CHUNK` at a time, and hands each result to `each` in
/// order (a refused command is an `Err`). Nothing is kept: a million orders pass through.
async fn submit_each(
    state: &Arc<AppState>,
    commands: impl IntoIterator<Item = Command>,
    mut each: impl FnMut(ApiResult<CommandOutcome>) -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        // Submitted together so the writer commits them in a few batches.
        let mut tasks = JoinSet::new();
        for (index, command) in commands.by_ref().take(SUBMIT_CHUNK).enumerate() {
            let state = state.clone();
            tasks.spawn(async move { (index, state.submit(command).await) });
        }
        let mut chunk = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            let (index, outcome) =
                joined.map_err(|e| NodeError::Startup(format!("demo task failed: {e}")))?;
            chunk.push((index, outcome));
        }
        chunk.sort_by_key(|(index, _)| *index);
        for (_, outcome) in chunk {
            each(outcome)?;
        }
    }
    Ok(())
}

/// [`submit_each`], keeping the results in order.
async fn submit_all(
    state: &Arc<AppState>,
    commands: impl IntoIterator<Item = Command>,
) -> Result<Vec<ApiResult<CommandOutcome>>, NodeError> {
    let mut outcomes = Vec::new();
    submit_each(state, commands, |outcome| {
        outcomes.push(outcome);
        Ok(())
    })
    .await?;
    Ok(outcomes)
}

/// The demo's orders: `count` orders of one to three lines (quantity 1 or 2) of products with
/// ids in `products`, by the buyers in `buyers` in turn, placed at `at`.
pub fn demo_orders<'a>(
    products: &'a [u64],
    buyers: &'a [u64],
    count: usize,
    at: i64,
) -> impl Iterator<Item = Command> + 'a {
    let mut sequence = Sequence(0x0DE7_5EED);
    (0..count).map(move |n| {
        let line_count = sequence.between(1, 3) as usize;
        let mut lines: Vec<OrderLine> = Vec::with_capacity(line_count);
        while lines.len() < line_count {
            let product = products[(sequence.next() % products.len() as u64) as usize];
            if lines.iter().all(|l| l.product != product) || products.len() < line_count {
                lines.push(OrderLine {
                    product,
                    quantity: sequence.between(1, 2),
                });
            }
        }
        Command::PlaceOrder {
            user: buyers[n % buyers.len()],
            lines: OrderLines::Products(lines),
            idempotency_key: None,
            at,
        }
    })
}

fn new_user(username: &str, password_hash: String, is_staff: bool) -> Command {
    Command::CreateUser(NewUser {
        username: username.to_owned(),
        email: format!("{username}@soundwave.example"),
        phone_number: String::new(),
        password_hash,
        is_staff,
        date_joined: crate::clock::unix_micros(),
    })
}

/// How much the demo writes.
#[derive(Debug, Clone, Copy)]
pub struct DemoSize {
    pub products: usize,
    pub orders: usize,
}

/// Distinct pictures the demo catalog shows, in turn.
const DEMO_PICTURES: u32 = 6;
/// Their width and height in pixels.
const DEMO_PICTURE_SIZE: u32 = 480;

/// Gives every demo product one of a few generated pictures. The bytes of each travel in
/// the log once, with its first product; the others refer to them by content address.
async fn add_demo_pictures(state: &Arc<AppState>, product_ids: &[u64]) -> Result<(), NodeError> {
    let mut pictures = Vec::new();
    for seed in 0..DEMO_PICTURES {
        let bytes = crate::images::generated_picture(seed, DEMO_PICTURE_SIZE)?;
        pictures.push(crate::images::process(bytes).await?);
    }
    let command = |(n, &product): (usize, &u64), with_bytes: bool| {
        let picture = &pictures[n % pictures.len()];
        Command::AddProductImage {
            product,
            image: picture.image.clone(),
            blobs: if with_bytes {
                picture.blobs.clone()
            } else {
                Vec::new()
            },
        }
    };
    let first = product_ids.iter().enumerate().take(pictures.len());
    for outcome in submit_all(state, first.map(|p| command(p, true))).await? {
        outcome?;
    }
    let rest = product_ids.iter().enumerate().skip(pictures.len());
    for outcome in submit_all(state, rest.map(|p| command(p, false))).await? {
        outcome?;
    }
    Ok(())
}

/// Fills an empty store with the demo data and prints the demo credentials.
pub async fn seed(state: &Arc<AppState>, data_dir: &Path, size: DemoSize) -> Result<(), NodeError> {
    let credentials_path = data_dir.join(CREDENTIALS_FILE);
    if !state.read()?.catalog_is_empty()? {
        match std::fs::read_to_string(&credentials_path) {
            Ok(text) => print!("{text}"),
            Err(_) => println!("demo: the store already has a catalog; nothing added"),
        }
        return Ok(());
    }
    let started = Instant::now();

    let categories = SHELVES.iter().map(|shelf| Command::CreateCategory {
        name: shelf.name.to_owned(),
    });
    let mut category_ids = Vec::new();
    for outcome in submit_all(state, categories).await? {
        match outcome? {
            CommandOutcome::Category(category) => category_ids.push(category.id),
            other => return Err(NodeError::Startup(format!("demo category: {other:?}"))),
        }
    }
    // Room for the demo's orders: three units per order on average, twice over.
    let extra_stock = if size.orders > 0 {
        u32::try_from(size.orders.saturating_mul(6) / size.products.max(1)).unwrap_or(u32::MAX)
    } else {
        0
    };
    let products = demo_products(&category_ids, size.products, extra_stock)
        .into_iter()
        .map(Command::CreateProduct);
    let mut product_ids = Vec::with_capacity(size.products);
    for outcome in submit_all(state, products).await? {
        match outcome? {
            CommandOutcome::Product(product) => product_ids.push(product.id),
            other => return Err(NodeError::Startup(format!("demo product: {other:?}"))),
        }
    }

    add_demo_pictures(state, &product_ids).await?;

    let mut lines = String::new();
    for (username, is_staff, label) in [
        (ADMIN, true, "demo admin"),
        (SHOPPER, false, "demo shopper"),
    ] {
        let password = random_password()?;
        let password_hash = auth::hash_password(password.clone()).await?;
        state
            .submit(new_user(username, password_hash, is_staff))
            .await?;
        lines.push_str(&format!(
            "{label}: username={username} password={password}\n"
        ));
    }
    let mut summary = format!(
        "demo: added {} categories and {} products",
        SHELVES.len(),
        product_ids.len()
    );

    if size.orders > 0 && !product_ids.is_empty() {
        let buyer_count = size.orders.div_ceil(ORDERS_PER_BUYER);
        let password = random_password()?;
        let password_hash = auth::hash_password(password.clone()).await?;
        let buyers = (1..=buyer_count)
            .map(|n| new_user(&format!("{BUYER_PREFIX}{n}"), password_hash.clone(), false));
        let mut buyer_ids = Vec::with_capacity(buyer_count);
        for outcome in submit_all(state, buyers).await? {
            match outcome? {
                CommandOutcome::User(user) => buyer_ids.push(user.id),
                other => return Err(NodeError::Startup(format!("demo buyer: {other:?}"))),
            }
        }
        lines.push_str(&format!(
            "demo buyers: username={BUYER_PREFIX}1..{BUYER_PREFIX}{buyer_count} password={password}\n"
        ));
        let orders_started = Instant::now();
        let orders = demo_orders(
            &product_ids,
            &buyer_ids,
            size.orders,
            crate::clock::unix_micros(),
        );
        let mut placed = 0usize;
        submit_each(state, orders, |outcome| {
            if matches!(outcome, Ok(CommandOutcome::Order { .. })) {
                placed += 1;
            }
            Ok(())
        })
        .await?;
        summary.push_str(&format!(
            ", {buyer_count} buyers and {placed} orders ({} refused; orders took {:.1} s)",
            size.orders - placed,
            orders_started.elapsed().as_secs_f64()
        ));
    }
    crate::private_files::write_private(&credentials_path, &lines).map_err(|e| {
        NodeError::Startup(format!("cannot write {}: {e}", credentials_path.display()))
    })?;
    println!("{summary} in {:.1} s", started.elapsed().as_secs_f64());
    print!("{lines}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_is_the_same_every_time_and_plausible() {
        let ids = [1, 2, 3, 4, 5, 6];
        let first = demo_products(&ids, 1000, 0);
        assert_eq!(first, demo_products(&ids, 1000, 0));
        assert_eq!(first.len(), 1000);
        for product in &first {
            assert!(!product.name.is_empty() && product.name.chars().count() <= 200);
            assert!(product.price > Decimal::ZERO && product.price.scale() == 2);
            assert!(ids.contains(&product.category));
        }
    }
}
