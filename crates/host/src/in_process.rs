//! A channel to a card living in this process.

use crate::channel::{CardChannel, ChannelError};
use crate::virtual_card::VirtualCard;

/// A [`CardChannel`] to a [`VirtualCard`] in this process: no reader, no daemon, no copy
/// beyond the APDU buffers.
#[derive(Debug)]
pub struct InProcessChannel<C> {
    card: C,
    atr: Vec<u8>,
}

impl<C: VirtualCard> InProcessChannel<C> {
    /// Powers `card` on and opens a channel to it.
    pub fn new(mut card: C) -> Self {
        let atr = card.power_on();
        Self { card, atr }
    }

    /// The card behind the channel.
    pub fn card(&self) -> &C {
        &self.card
    }

    /// The card behind the channel, mutably (for tests that inspect or tear it).
    pub fn card_mut(&mut self) -> &mut C {
        &mut self.card
    }

    /// Powers the card off and gives it back.
    pub fn into_card(mut self) -> C {
        self.card.power_off();
        self.card
    }
}

impl<C: VirtualCard> CardChannel for InProcessChannel<C> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        Ok(self.card.transmit(command))
    }

    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.atr = self.card.reset();
        Ok(self.atr.clone())
    }

    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        Ok(self.atr.clone())
    }
}

#[cfg(test)]
mod tests {
    use tessera_apdu::{Command, Response, StatusWord};

    use super::*;
    use crate::virtual_card::{ECHO_ATR, EchoCard};

    /// A card that returns a long response in pieces (`61xx`) and insists on an exact Le
    /// (`6Cxx`), like many real cards do.
    struct ChattyCard {
        pending: Vec<u8>,
    }

    impl VirtualCard for ChattyCard {
        fn power_on(&mut self) -> Vec<u8> {
            self.atr()
        }
        fn power_off(&mut self) {}
        fn reset(&mut self) -> Vec<u8> {
            self.pending.clear();
            self.atr()
        }
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x00]
        }
        fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
            let cmd = Command::parse(command).unwrap();
            match cmd.ins {
                // READ: 300 bytes available, handed out 100 at a time.
                0xB0 => {
                    self.pending = (0..300u16).map(|i| i as u8).collect();
                    self.next_piece()
                }
                0xC0 => self.next_piece(),
                // EXACT: answers only when Le is exactly 5.
                0xE0 if cmd.le == Some(5) => Response::ok([1, 2, 3, 4, 5]).to_bytes(),
                0xE0 => StatusWord::wrong_le(5).to_bytes().to_vec(),
                // LOOP: always 6Cxx, a broken card.
                _ => StatusWord::wrong_le(1).to_bytes().to_vec(),
            }
        }
    }

    impl ChattyCard {
        fn next_piece(&mut self) -> Vec<u8> {
            let n = self.pending.len().min(100);
            let mut out: Vec<u8> = self.pending.drain(..n).collect();
            let left = self.pending.len();
            let sw = if left == 0 {
                StatusWord::SUCCESS
            } else {
                StatusWord::bytes_remaining(left.min(255) as u8)
            };
            out.extend_from_slice(&sw.to_bytes());
            out
        }
    }

    #[test]
    fn echo_card_through_the_channel() {
        let mut ch = InProcessChannel::new(EchoCard::new());
        assert!(ch.card().is_powered());
        assert_eq!(ch.atr().unwrap(), ECHO_ATR);
        let rsp = ch.transmit(&Command::new(0, 0x01, 0, 0).with_data([7, 8, 9])).unwrap();
        assert_eq!(rsp, Response::ok([7, 8, 9]));
        assert!(!ch.into_card().is_powered());
    }

    #[test]
    fn get_response_chains_are_followed() {
        let mut ch = InProcessChannel::new(ChattyCard { pending: Vec::new() });
        let rsp = ch.transmit(&Command::new(0, 0xB0, 0, 0).with_le(256)).unwrap();
        assert_eq!(rsp.sw, StatusWord::SUCCESS);
        assert_eq!(rsp.data, (0..300u16).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn wrong_le_is_reissued_with_the_exact_length() {
        let mut ch = InProcessChannel::new(ChattyCard { pending: Vec::new() });
        let rsp = ch.transmit(&Command::new(0, 0xE0, 0, 0).with_le(256)).unwrap();
        assert_eq!(rsp, Response::ok([1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_card_that_never_settles_is_an_error_not_a_hang() {
        let mut ch = InProcessChannel::new(ChattyCard { pending: Vec::new() });
        let err = ch.transmit(&Command::new(0, 0xEE, 0, 0)).unwrap_err();
        assert!(matches!(err, ChannelError::CardProtocol(_)), "{err}");
    }
}
