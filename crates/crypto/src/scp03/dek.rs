//! Key components under K-DEK (PUT KEY) and key check values.

use zeroize::Zeroizing;

use crate::block::{AesCipher, BLOCK};
use crate::keys::AesKey;
use crate::{CryptoError, Result};

/// Encrypts a key component under the static K-DEK: AES-CBC with a zero ICV (GlobalPlatform
/// Card Specification v2.3 section 11.8.2.3, Amendment D section 7.2). A component whose
/// length is a multiple of 16 is encrypted as is (Table 11-71); otherwise the block is its
/// one-byte length followed by the component right-padded with `00` and encrypted (Table 11-70).
pub fn encrypt_key_component(dek: &AesKey, component: &[u8]) -> Result<Vec<u8>> {
    if component.is_empty() || component.len() > 127 {
        return Err(CryptoError::InvalidLength("key component must be 1 to 127 bytes"));
    }
    let c = AesCipher::new(dek);
    if component.len().is_multiple_of(BLOCK) {
        let mut out = component.to_vec();
        c.cbc_encrypt(&[0; BLOCK], &mut out)?;
        return Ok(out);
    }
    let mut buf = Zeroizing::new(component.to_vec());
    buf.resize(component.len().div_ceil(BLOCK) * BLOCK, 0);
    c.cbc_encrypt(&[0; BLOCK], &mut buf)?;
    let mut out = vec![component.len() as u8];
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts a key component block made by [`encrypt_key_component`] (either table's layout).
pub fn decrypt_key_component(dek: &AesKey, block: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let c = AesCipher::new(dek);
    let (len, body) = if block.len().is_multiple_of(BLOCK) {
        (block.len(), block)
    } else {
        let (&len, body) = block.split_first().ok_or(CryptoError::Malformed("key component"))?;
        (len as usize, body)
    };
    if body.is_empty() || !body.len().is_multiple_of(BLOCK) || len > body.len() || len == 0 {
        return Err(CryptoError::Malformed("key component block"));
    }
    let mut buf = Zeroizing::new(body.to_vec());
    c.cbc_decrypt(&[0; BLOCK], &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// The AES key check value: the first three bytes of AES(key, 16 bytes of `01`)
/// (GlobalPlatform Card Specification v2.3 section 11.8.2.3.3).
pub fn key_check_value(key: &AesKey) -> [u8; 3] {
    let mut b = [0x01u8; BLOCK];
    AesCipher::new(key).encrypt_block(&mut b);
    [b[0], b[1], b[2]]
}
