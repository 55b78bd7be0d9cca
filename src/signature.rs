//! minisign signatures over a prepared image's manifest. The manifest holds
//! every chunk's digest, so signing it signs everything a restore writes;
//! `IMAGE.minisig` beside the image is made with the standard `minisign`
//! tool from the manifest `reimage imagescan --manifest` writes out.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use minisign_verify::{Error as MsError, PublicKey, Signature};

/// A `--pubkey` value: a minisign public key file, or the key itself (the
/// base64 line of such a file, as `minisign -G` prints it).
pub fn parse_pubkey(arg: &str) -> Result<PublicKey> {
    if Path::new(arg).is_file() {
        return PublicKey::from_file(arg)
            .map_err(|e| anyhow!("--pubkey {arg}: not a minisign public key file ({e})"));
    }
    PublicKey::from_base64(arg.trim())
        .map_err(|_| anyhow!("--pubkey: {arg:?} is neither a minisign public key nor a key file"))
}

/// Checks `sig_text` (the contents of `sig_name`) against `manifest`.
pub fn verify_manifest(
    key: &PublicKey,
    manifest: &[u8],
    sig_text: &str,
    sig_name: &str,
) -> Result<()> {
    let sig = Signature::decode(sig_text)
        .map_err(|_| anyhow!("{sig_name} is not a minisign signature"))?;
    // Legacy (non-prehashed) signatures are still Ed25519 over the
    // manifest; accepting them costs no security.
    match key.verify(manifest, &sig, true) {
        Ok(()) => Ok(()),
        Err(MsError::UnexpectedKeyId) => {
            bail!("{sig_name} was made with a different key than --pubkey")
        }
        Err(MsError::InvalidSignature) => {
            bail!("{sig_name} does not match the image: the image or its signature was altered")
        }
        Err(e) => bail!("{sig_name}: {e}"),
    }
}
