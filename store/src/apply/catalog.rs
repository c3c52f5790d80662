//! Categories and products: staff commands that shape the catalog.

use redb::ReadableTable;

use super::{ChangeSet, CommandResult, WriteTables, does_not_exist};
use crate::command::{CommandOutcome, NewProduct, ProductChanges, Rejection};
use crate::model::{Category, Id, Product};
use crate::tables::encode;

pub(super) fn create_category(
    t: &mut WriteTables<'_>,
    name: &str,
    changes: &mut ChangeSet,
) -> CommandResult {
    let key = name.to_lowercase();
    if t.category_names.get(key.as_str())?.is_some() {
        return Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        }
        .into());
    }
    let category = Category {
        id: t.next_id("category")?,
        name: name.to_owned(),
    };
    t.categories
        .insert(category.id, encode(&category)?.as_slice())?;
    t.category_names.insert(key.as_str(), category.id)?;
    changes.categories = true;
    Ok(CommandOutcome::Category(category))
}

pub(super) fn update_category(
    t: &mut WriteTables<'_>,
    id: Id,
    name: &str,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut category) = t.category(id)? else {
        return Err(Rejection::NotFound.into());
    };
    let old_key = category.name.to_lowercase();
    let new_key = name.to_lowercase();
    if let Some(owner) = t.category_names.get(new_key.as_str())?.map(|v| v.value())
        && owner != id
    {
        return Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        }
        .into());
    }
    t.category_names.remove(old_key.as_str())?;
    t.category_names.insert(new_key.as_str(), id)?;
    category.name = name.to_owned();
    t.categories.insert(id, encode(&category)?.as_slice())?;
    changes.categories = true;
    Ok(CommandOutcome::Category(category))
}

pub(super) fn delete_category(
    t: &mut WriteTables<'_>,
    id: Id,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(category) = t.category(id)? else {
        return Err(Rejection::NotFound.into());
    };
    if t.category_has_products(id)? {
        return Err(Rejection::CategoryInUse.into());
    }
    t.category_names
        .remove(category.name.to_lowercase().as_str())?;
    t.categories.remove(id)?;
    changes.categories = true;
    Ok(CommandOutcome::Done)
}

pub(super) fn create_product(
    t: &mut WriteTables<'_>,
    new: &NewProduct,
    changes: &mut ChangeSet,
) -> CommandResult {
    if t.category(new.category)?.is_none() {
        return Err(does_not_exist("category", new.category).into());
    }
    let product = Product {
        id: t.next_id("product")?,
        name: new.name.clone(),
        stock: new.stock,
        price: new.price,
        description: new.description.clone(),
        category: new.category,
        ordered: false,
        archived: false,
    };
    t.put_product(&product)?;
    t.products_by_category
        .insert((product.category, product.id), ())?;
    changes.products.insert(product.id);
    changes.product_listing = true;
    Ok(CommandOutcome::Product(product))
}

pub(super) fn update_product(
    t: &mut WriteTables<'_>,
    id: Id,
    c: &ProductChanges,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut product) = t.product_on_sale(id)? else {
        return Err(Rejection::NotFound.into());
    };
    if let Some(category) = c.category
        && t.category(category)?.is_none()
    {
        return Err(does_not_exist("category", category).into());
    }
    if let Some(category) = c.category
        && category != product.category
    {
        t.products_by_category.remove((product.category, id))?;
        t.products_by_category.insert((category, id), ())?;
        product.category = category;
        changes.product_listing = true;
    }
    if let Some(name) = &c.name
        && *name != product.name
    {
        product.name = name.clone();
        changes.product_names = true;
        changes.product_listing = true;
    }
    if let Some(stock) = c.stock {
        product.stock = stock;
    }
    if let Some(price) = c.price {
        product.price = price;
    }
    if let Some(description) = &c.description {
        product.description = description.clone();
    }
    t.put_product(&product)?;
    changes.products.insert(id);
    Ok(CommandOutcome::Product(product))
}

pub(super) fn delete_product(
    t: &mut WriteTables<'_>,
    id: Id,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut product) = t.product_on_sale(id)? else {
        return Err(Rejection::NotFound.into());
    };
    // Cart lines of a product that is gone can never be ordered: drop them.
    let cart_lines: Vec<Id> = t
        .cart_lines_by_product
        .range((id, 0)..=(id, u64::MAX))?
        .map(|entry| entry.map(|(key, _)| key.value().1))
        .collect::<Result<_, _>>()?;
    for item_id in cart_lines {
        if let Some(item) = t.order_item(item_id)? {
            t.order_items.remove(item_id)?;
            t.order_items_by_user.remove((item.user, item_id))?;
            t.count_cart_line(item.user, false)?;
            changes.users.insert(item.user);
        }
        t.cart_lines_by_product.remove((id, item_id))?;
    }
    if product.ordered {
        product.archived = true;
        t.put_product(&product)?;
    } else {
        t.products.remove(id)?;
        t.products_by_category.remove((product.category, id))?;
        super::media::drop_product_images(t, id)?;
    }
    changes.products.insert(id);
    changes.product_names = true;
    changes.product_listing = true;
    Ok(CommandOutcome::Done)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rust_decimal::Decimal;

    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;
    use crate::query::{ProductQuery, ProductSort};

    #[test]
    fn category_names_are_unique_case_insensitively() {
        let s = TestStore::new();
        assert_eq!(created_id(s.apply(category("Rock"))), 1);
        let duplicate = Err(Rejection::Duplicate {
            what: "category",
            field: "name",
        });
        assert_eq!(s.apply(category("rock")), duplicate);
        assert_eq!(s.apply(category("ROCK")), duplicate);
        assert_eq!(created_id(s.apply(category("Jazz"))), 2);

        // Renaming onto another category's name, in any case, is refused.
        let rename = |id, name: &str| Command::UpdateCategory {
            id,
            name: name.into(),
        };
        assert_eq!(s.apply(rename(2, "rOcK")), duplicate);
        // Renaming a category to its own name in another case is fine and frees nothing.
        assert_eq!(
            s.apply(rename(1, "ROCK")),
            Ok(CommandOutcome::Category(Category {
                id: 1,
                name: "ROCK".into()
            }))
        );
        assert_eq!(s.apply(category("Rock")), duplicate);
        // A rename frees the old name.
        assert!(s.apply(rename(1, "Metal")).is_ok());
        assert_eq!(created_id(s.apply(category("rock"))), 3);
        assert_eq!(s.apply(rename(99, "Pop")), Err(Rejection::NotFound));

        // Deleting frees the name too; ids are never reused.
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 3 }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(created_id(s.apply(category("ROCK"))), 4);
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 3 }),
            Err(Rejection::NotFound)
        );
        let names: Vec<String> = s
            .store
            .read()
            .unwrap()
            .categories()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Metal", "Jazz", "ROCK"]);
    }

    #[test]
    fn category_with_products_cannot_be_deleted() {
        let s = shop();
        assert_eq!(created_id(s.apply(category("Jazz"))), 2);
        assert_eq!(created_id(s.apply(product("Sax", 1, 100, 2))), 1);
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 2 }),
            Err(Rejection::CategoryInUse)
        );
        // Moving the product away frees the category.
        let moved = s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                category: Some(1),
                ..Default::default()
            },
        });
        assert!(matches!(moved, Ok(CommandOutcome::Product(ref p)) if p.category == 1));
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 1 }),
            Err(Rejection::CategoryInUse)
        );
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 2 }),
            Ok(CommandOutcome::Done)
        );
        // A product that was never ordered is erased, which frees its category.
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 1 }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(
            s.apply(Command::DeleteCategory { id: 1 }),
            Ok(CommandOutcome::Done)
        );
        assert!(s.store.read().unwrap().catalog_is_empty().unwrap());
    }

    #[test]
    fn products_need_an_existing_category() {
        let s = shop();
        assert_invalid(s.apply(product("Sax", 1, 100, 9)), "category");
        assert_eq!(created_id(s.apply(product("Sax", 1, 100, 1))), 1);
        let to_missing = Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                category: Some(9),
                name: Some("Renamed".into()),
                ..Default::default()
            },
        };
        let before = s.digest();
        assert_invalid(s.apply(to_missing), "category");
        assert_eq!(s.digest(), before);
        assert_eq!(s.product(1).unwrap().name, "Sax");
        let missing = Command::UpdateProduct {
            id: 2,
            changes: ProductChanges::default(),
        };
        assert_eq!(s.apply(missing), Err(Rejection::NotFound));
    }

    #[test]
    fn ordered_product_is_archived_and_unordered_one_erased() {
        let s = shop();
        assert_eq!(created_id(s.apply(product("Guitar", 5, 1000, 1))), 1);
        assert_eq!(created_id(s.apply(product("Drum", 5, 500, 1))), 2);
        // Both products sit in bob's cart; alice orders the guitar.
        assert_eq!(created_id(s.apply(add_to_cart(BOB, 1, 1))), 1);
        assert_eq!(created_id(s.apply(add_to_cart(BOB, 2, 1))), 2);
        let (placed_order, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        // A rename after the order: the order keeps the name it was placed with.
        let renamed = s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                name: Some("Electric Guitar".into()),
                ..Default::default()
            },
        });
        assert!(renamed.is_ok());

        let mut changes = ChangeSet::default();
        let results = s
            .store
            .apply_batch(
                &[
                    Command::DeleteProduct { id: 1 },
                    Command::DeleteProduct { id: 2 },
                ],
                &mut changes,
            )
            .unwrap();
        assert_eq!(
            results,
            [Ok(CommandOutcome::Done), Ok(CommandOutcome::Done)]
        );
        assert!(changes.product_names);
        assert_eq!(changes.products, BTreeSet::from([1, 2]));
        assert_eq!(changes.users, BTreeSet::from([BOB]));

        // Soft delete: the guitar stays, archived, with the stock the order left.
        let guitar = s.product(1).expect("ordered product is kept");
        assert!(guitar.archived && guitar.ordered);
        assert_eq!(guitar.stock, 3);
        // Hard delete: the drum is gone.
        assert_eq!(s.product(2), None);

        let reader = s.store.read().unwrap();
        // Bob's cart lines of both products were dropped.
        assert_eq!(reader.order_items(Some(BOB), 0, 10).unwrap().total, 0);
        assert_eq!(reader.order_item(1).unwrap(), None);
        // Alice's order still shows the product as it was ordered.
        let view = reader.order(placed_order.id).unwrap().expect("order kept");
        assert_eq!(view.username, "alice");
        assert_eq!(view.items.len(), 1);
        assert_eq!(view.items[0].product_name, "Guitar");
        assert_eq!(view.items[0].item.product, 1);
        assert_eq!(view.items[0].item.unit_price, Some(Decimal::new(1000, 2)));
        // Archived products are not listed.
        let all = ProductQuery {
            stock: Default::default(),
            category: None,
            name_contains: None,
            sort: ProductSort::Id,
            limit: 100,
            offset: 0,
        };
        assert_eq!(reader.products(&all).unwrap().total, 0);
        drop(reader);

        // An archived product is not for sale and cannot be changed or deleted again.
        assert_invalid(s.apply(add_to_cart(ALICE, 1, 1)), "product");
        assert_invalid(s.apply(order(ALICE, &[(1, 1)], None)), "items");
        let update = Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                stock: Some(10),
                ..Default::default()
            },
        };
        assert_eq!(s.apply(update), Err(Rejection::NotFound));
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 1 }),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            s.apply(Command::DeleteProduct { id: 2 }),
            Err(Rejection::NotFound)
        );
        // Cancelling still returns the stock to the archived record.
        assert!(s.apply(cancel(ALICE, placed_order.id)).is_ok());
        assert_eq!(s.stock(1), 5);
    }
}
