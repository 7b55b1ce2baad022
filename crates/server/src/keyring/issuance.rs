//! The keyring step of issuance: the commands that personalise a new card's keyring applet
//! through the issuer security domain, inside the issuance's SCP03 session.
//!
//! | command | APDU (before wrapping) |
//! |---|---|
//! | INSTALL [for personalization] | `80 E6 20 00 Lc 00 L AID 00 00 00 00`: STORE DATA now goes to the keyring |
//! | STORE DATA, one per data group | `80 E2 P1 P2 Lc DGI L value`: P2 the block number from 0, P1 `88` on the last block, `08` before |
//!
//! The groups are [`super::KeyringService::issue`]'s: the configuration (`0201`: mode, M, N),
//! then every internal key (`8201`) and external key (`8202`) at version 1. They travel only
//! inside the session (C-MAC and C-DECRYPTION), never in the clear.

use tessera_apdu::Command;
use tessera_proto::keyring::AID;

/// The personalisation commands of a keyring, from its data groups (DGI, value; each value
/// shorter than 256 bytes, as every keyring group is).
pub fn personalisation_commands(groups: &[(u16, Vec<u8>)]) -> Vec<Command> {
    let mut install = vec![0x00, AID.len() as u8];
    install.extend_from_slice(AID);
    install.extend_from_slice(&[0x00, 0x00, 0x00]);
    let mut out = vec![Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256)];
    for (block, (dgi, value)) in groups.iter().enumerate() {
        let mut data = dgi.to_be_bytes().to_vec();
        data.push(value.len().min(255) as u8);
        data.extend_from_slice(&value[..value.len().min(255)]);
        let p1 = if block + 1 == groups.len() { 0x88 } else { 0x08 };
        out.push(Command::new(0x80, 0xE2, p1, block as u8).with_data(data));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_then_one_block_per_group() {
        let groups = vec![(0x0201, vec![1, 2, 2]), (0x8201, vec![9; 21])];
        let c = personalisation_commands(&groups);
        assert_eq!(c.len(), 3);
        assert_eq!(
            hex::encode_upper(c[0].to_bytes().unwrap()),
            "80E620000F000AF054455353455241 4B5200000000".replace(' ', "")
        );
        assert_eq!(hex::encode_upper(c[1].to_bytes().unwrap()), "80E2080006020103010202");
        assert_eq!((c[2].p1, c[2].p2, c[2].data.len()), (0x88, 1, 24));
    }
}
