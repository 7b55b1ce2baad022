//! What a software card must offer to be reached in process or served through vpcd.

/// A card simulated in this process: the contacts of a card, as a reader drives them.
///
/// Implementations never panic on any input: a malformed command gets an error status word.
pub trait VirtualCard {
    /// Cold start: powers the card and returns its answer to reset.
    fn power_on(&mut self) -> Vec<u8>;
    /// Removes power: all volatile state is lost.
    fn power_off(&mut self);
    /// Warm reset: volatile state is lost, the card stays powered; returns the ATR.
    fn reset(&mut self) -> Vec<u8>;
    /// The answer to reset, without changing any state.
    fn atr(&self) -> Vec<u8>;
    /// Processes one command APDU and returns the response APDU (data and status word).
    fn transmit(&mut self, command: &[u8]) -> Vec<u8>;
}

impl<T: VirtualCard + ?Sized> VirtualCard for Box<T> {
    fn power_on(&mut self) -> Vec<u8> {
        (**self).power_on()
    }
    fn power_off(&mut self) {
        (**self).power_off()
    }
    fn reset(&mut self) -> Vec<u8> {
        (**self).reset()
    }
    fn atr(&self) -> Vec<u8> {
        (**self).atr()
    }
    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        (**self).transmit(command)
    }
}

impl VirtualCard for tessera_card::Card {
    fn power_on(&mut self) -> Vec<u8> {
        tessera_card::Card::power_on(self)
    }
    fn power_off(&mut self) {
        tessera_card::Card::power_off(self)
    }
    fn reset(&mut self) -> Vec<u8> {
        tessera_card::Card::reset(self)
    }
    fn atr(&self) -> Vec<u8> {
        tessera_card::Card::atr(self).to_vec()
    }
    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        tessera_card::Card::transmit(self, command)
    }
}

/// A card that does no work: it answers every command with the command's data and `9000`.
///
/// It is the baseline of the round-trip benchmarks: whatever time it takes is the transport's.
/// A command shorter than a header gets `6700`.
#[derive(Debug, Default, Clone)]
pub struct EchoCard {
    powered: bool,
}

/// The echo card's ATR: direct convention, T=0 and T=1, historical bytes "echo", check byte.
pub const ECHO_ATR: [u8; 9] = [0x3B, 0x84, 0x80, 0x01, b'e', b'c', b'h', b'o', 0x04];

impl EchoCard {
    /// A fresh, unpowered echo card.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while the card is powered.
    pub fn is_powered(&self) -> bool {
        self.powered
    }
}

impl VirtualCard for EchoCard {
    fn power_on(&mut self) -> Vec<u8> {
        self.powered = true;
        self.atr()
    }

    fn power_off(&mut self) {
        self.powered = false;
    }

    fn reset(&mut self) -> Vec<u8> {
        self.powered = true;
        self.atr()
    }

    fn atr(&self) -> Vec<u8> {
        ECHO_ATR.to_vec()
    }

    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        match tessera_apdu::Command::parse(command) {
            Ok(cmd) => {
                let mut out = cmd.data;
                out.extend_from_slice(&[0x90, 0x00]);
                out
            }
            Err(err) => err.status().to_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_returns_data_and_9000() {
        let mut card = EchoCard::new();
        card.power_on();
        assert_eq!(
            card.transmit(&[0x00, 0x01, 0x02, 0x03, 0x02, 0xAB, 0xCD]),
            [0xAB, 0xCD, 0x90, 0x00]
        );
        assert_eq!(card.transmit(&[0x00, 0x01, 0x02, 0x03]), [0x90, 0x00]);
        assert_eq!(card.transmit(&[0x00, 0x01]), [0x67, 0x00]);
    }

    #[test]
    fn echo_atr_has_a_valid_check_byte() {
        let atr = EchoCard::new().atr();
        // T=1 is indicated, so TCK is present and XOR of T0..TCK is zero.
        assert_eq!(atr.len(), 9);
        assert_eq!(atr[1..].iter().fold(0u8, |a, b| a ^ b), 0);
    }
}
