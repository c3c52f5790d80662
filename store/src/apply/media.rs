//! Product images: the images a product shows (`product_images`) and the content-addressed
//! bytes they refer to (`media`, counted in `media_refs`: bytes no image refers to any more
//! are dropped).

use redb::ReadableTable;

use super::{ChangeSet, CommandResult, MAX_PRODUCT_IMAGES, WriteTables};
use crate::command::{CommandOutcome, MediaBlob, Rejection};
use crate::error::StoreError;
use crate::model::{Id, MediaRef, ProductImage};
use crate::tables::{decode, encode};

impl WriteTables<'_> {
    fn product_images(&self, product: Id) -> Result<Vec<ProductImage>, StoreError> {
        self.product_images
            .get(product)?
            .map_or(Ok(Vec::new()), |v| decode(v.value()))
    }

    fn put_product_images(
        &mut self,
        product: Id,
        images: &[ProductImage],
    ) -> Result<(), StoreError> {
        if images.is_empty() {
            self.product_images.remove(product)?;
        } else {
            self.product_images
                .insert(product, encode(&images)?.as_slice())?;
        }
        Ok(())
    }

    /// One more image refers to `media`.
    fn retain_media(&mut self, media: &MediaRef) -> Result<(), StoreError> {
        let key = media.key();
        let refs = self.media_refs.get(key.as_str())?.map_or(0, |v| v.value());
        self.media_refs.insert(key.as_str(), refs + 1)?;
        Ok(())
    }

    /// One image fewer refers to `media`; the bytes go with the last.
    fn release_media(&mut self, media: &MediaRef) -> Result<(), StoreError> {
        let key = media.key();
        let refs = self.media_refs.get(key.as_str())?.map_or(0, |v| v.value());
        if refs <= 1 {
            self.media_refs.remove(key.as_str())?;
            self.media.remove(key.as_str())?;
        } else {
            self.media_refs.insert(key.as_str(), refs - 1)?;
        }
        Ok(())
    }
}

pub(super) fn add_product_image(
    t: &mut WriteTables<'_>,
    product: Id,
    image: &ProductImage,
    blobs: &[MediaBlob],
    changes: &mut ChangeSet,
) -> CommandResult {
    if t.product_on_sale(product)?.is_none() {
        return Err(Rejection::NotFound.into());
    }
    let mut images = t.product_images(product)?;
    // The same picture twice on one product is one image: nothing to add.
    if images.iter().any(|i| i.image == image.image) {
        return Ok(CommandOutcome::Done);
    }
    if images.len() >= MAX_PRODUCT_IMAGES {
        return Err(Rejection::TooManyImages.into());
    }
    for media in [&image.image, &image.thumbnail] {
        let key = media.key();
        let carried = blobs.iter().any(|b| &b.media == media);
        if !carried && t.media.get(key.as_str())?.is_none() {
            return Err(Rejection::Invalid {
                field: "image",
                message: format!("The bytes of {key} are neither stored nor sent."),
            }
            .into());
        }
    }
    for blob in blobs {
        let key = blob.media.key();
        if t.media.get(key.as_str())?.is_none() {
            t.media.insert(key.as_str(), blob.bytes.as_slice())?;
        }
    }
    t.retain_media(&image.image)?;
    t.retain_media(&image.thumbnail)?;
    images.push(image.clone());
    t.put_product_images(product, &images)?;
    changes.products.insert(product);
    Ok(CommandOutcome::Done)
}

pub(super) fn delete_product_image(
    t: &mut WriteTables<'_>,
    product: Id,
    hash: &str,
    changes: &mut ChangeSet,
) -> CommandResult {
    if t.product_on_sale(product)?.is_none() {
        return Err(Rejection::NotFound.into());
    }
    let mut images = t.product_images(product)?;
    let Some(index) = images.iter().position(|i| i.image.hash == hash) else {
        return Err(Rejection::NotFound.into());
    };
    let removed = images.remove(index);
    t.release_media(&removed.image)?;
    t.release_media(&removed.thumbnail)?;
    t.put_product_images(product, &images)?;
    changes.products.insert(product);
    Ok(CommandOutcome::Done)
}

/// Drops the images of a product that is erased.
pub(super) fn drop_product_images(t: &mut WriteTables<'_>, product: Id) -> Result<(), StoreError> {
    for image in t.product_images(product)? {
        t.release_media(&image.image)?;
        t.release_media(&image.thumbnail)?;
    }
    t.put_product_images(product, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;
    use crate::model::ImageFormat;

    fn media(hash: &str, format: ImageFormat) -> MediaRef {
        MediaRef {
            hash: hash.into(),
            format,
        }
    }

    fn picture(name: &str) -> (ProductImage, Vec<MediaBlob>) {
        let image = ProductImage {
            image: media(name, ImageFormat::Png),
            thumbnail: media(&format!("{name}-thumb"), ImageFormat::Jpeg),
            width: 64,
            height: 48,
        };
        let blobs = vec![
            MediaBlob {
                media: image.image.clone(),
                bytes: format!("{name} bytes").into_bytes(),
            },
            MediaBlob {
                media: image.thumbnail.clone(),
                bytes: format!("{name} thumb").into_bytes(),
            },
        ];
        (image, blobs)
    }

    /// The shop with two products, 1 and 2.
    fn shop() -> TestStore {
        let s = crate::apply::tests::shop();
        assert!(s.apply(product("Red Guitar", 3, 100, 1)).is_ok());
        assert!(s.apply(product("Blue Drum", 3, 100, 1)).is_ok());
        s
    }

    fn add(product: Id, (image, blobs): (ProductImage, Vec<MediaBlob>)) -> Command {
        Command::AddProductImage {
            product,
            image,
            blobs,
        }
    }

    #[test]
    fn images_are_shared_by_content_and_dropped_with_their_last_use() {
        let s = shop();
        let (red, _) = picture("red");
        assert_eq!(s.apply(add(1, picture("red"))), Ok(CommandOutcome::Done));
        // The second product sends no bytes: the store has them.
        assert_eq!(
            s.apply(add(2, (red.clone(), Vec::new()))),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(s.apply(add(1, picture("blue"))), Ok(CommandOutcome::Done));
        let reader = s.store.read().unwrap();
        let on_one = reader.product_images(1).unwrap();
        assert_eq!(on_one.len(), 2);
        assert_eq!(on_one[0], red, "the first image stays the main one");
        assert_eq!(reader.product_images(2).unwrap(), vec![red.clone()]);
        assert_eq!(
            reader.media("red.png").unwrap(),
            Some(b"red bytes".to_vec())
        );
        assert_eq!(
            reader.media("red-thumb.jpg").unwrap(),
            Some(b"red thumb".to_vec())
        );
        drop(reader);

        // Removing it from one product keeps the bytes for the other.
        let delete = |product, hash: &str| Command::DeleteProductImage {
            product,
            hash: hash.into(),
        };
        assert_eq!(s.apply(delete(1, "red")), Ok(CommandOutcome::Done));
        assert!(s.store.read().unwrap().media("red.png").unwrap().is_some());
        assert_eq!(s.apply(delete(1, "red")), Err(Rejection::NotFound));
        assert_eq!(s.apply(delete(2, "red")), Ok(CommandOutcome::Done));
        let reader = s.store.read().unwrap();
        assert_eq!(reader.media("red.png").unwrap(), None);
        assert_eq!(reader.media("red-thumb.jpg").unwrap(), None);
        assert_eq!(reader.product_images(2).unwrap(), Vec::new());
        assert!(reader.media("blue.png").unwrap().is_some());
    }

    #[test]
    fn refused_images_change_nothing() {
        let s = shop();
        let before = s.digest();
        // An unknown product, and bytes neither sent nor stored.
        assert_eq!(s.apply(add(99, picture("red"))), Err(Rejection::NotFound));
        let (red, _) = picture("red");
        assert!(matches!(
            s.apply(add(1, (red, Vec::new()))),
            Err(Rejection::Invalid { field: "image", .. })
        ));
        assert_eq!(s.digest(), before);
        for n in 0..MAX_PRODUCT_IMAGES {
            assert!(s.apply(add(1, picture(&format!("p{n}")))).is_ok());
        }
        let full = s.digest();
        assert_eq!(
            s.apply(add(1, picture("one-more"))),
            Err(Rejection::TooManyImages)
        );
        assert_eq!(s.digest(), full);
    }

    #[test]
    fn an_erased_product_takes_its_images_along() {
        let s = shop();
        assert!(s.apply(add(1, picture("red"))).is_ok());
        assert!(s.apply(Command::DeleteProduct { id: 1 }).is_ok());
        let reader = s.store.read().unwrap();
        assert_eq!(reader.product_images(1).unwrap(), Vec::new());
        assert_eq!(reader.media("red.png").unwrap(), None);
    }
}
