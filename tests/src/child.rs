//! [`KillOnDrop`]: a child process (a real engine, a browser, nginx) that cannot outlive its test,
//! even when the test panics.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
