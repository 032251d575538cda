//! stub
use super::{Errors, StreamState};
use crate::message::{Direction, Message};
pub const MAX_PACKET: usize = 0;
pub const MAX_FRAME: usize = 0;
pub const MAX_LINE: usize = 0;
pub const MAX_PAYLOAD: usize = 0;
#[derive(Debug, Default)]
pub struct YmsgParser;
impl YmsgParser {
    pub(crate) fn state(&self, _dir: Direction) -> StreamState { StreamState::Readable }
    pub(crate) fn gap(&mut self, _dir: Direction) {}
    pub(crate) fn feed(&mut self, _dir: Direction, _offset: u64, _data: &[u8], _out: &mut Vec<Message>, _errors: &mut Errors) {}
}
