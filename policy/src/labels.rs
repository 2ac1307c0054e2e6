//! Label sets written once: [`labels!`](crate::labels) declares an enum whose variants each
//! carry a code (their place in the list) and a name, and derives from that one list
//! everything else: every variant in order (`ALL`), their number (`COUNT`), code and name in
//! both directions, and `Display`.
//!
//! A variant may spell its code out (`UnknownVpc = 0 => "unknown-vpc"`) when the code is
//! part of an interface (WIT, the packed verdict word); the codes must then run 0, 1, 2... in
//! the order written, which the compiler checks. A counter array sized `COUNT` and indexed by
//! [`index`](crate::packet::DropReason::index) therefore always has the slot.

/// Declares a label set: an enum whose variants are numbered in the order written, each with
/// the name logs, counters, metrics and files show.
///
/// ```
/// flowgate_policy::labels! {
///     /// How a door is.
///     pub enum Door {
///         /// Shut.
///         Shut = 0 => "shut",
///         /// Open.
///         Open = 1 => "open",
///     }
/// }
/// assert_eq!(Door::COUNT, 2);
/// assert_eq!(Door::ALL, [Door::Shut, Door::Open]);
/// assert_eq!(Door::Open.code(), 1);
/// assert_eq!(Door::from_code(1), Some(Door::Open));
/// assert_eq!(Door::from_code(2), None);
/// assert_eq!(Door::from_name("open"), Some(Door::Open));
/// assert_eq!(Door::Shut.to_string(), "shut");
/// ```
#[macro_export]
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident $(= $code:literal)? => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        $vis enum $name {
            $($(#[$vmeta])* $variant $(= $code)?,)+
        }

        impl $name {
            /// How many there are.
            pub const COUNT: usize = [$($text),+].len();

            /// Every one, in code order.
            pub const ALL: [$name; $name::COUNT] = [$($name::$variant),+];

            /// The code: its place in [`Self::ALL`].
            #[inline]
            pub const fn code(self) -> u8 {
                self as u8
            }

            /// Its place in [`Self::ALL`], for arrays of [`Self::COUNT`] counters; always
            /// below `COUNT`.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The one with this code, if any.
            #[inline]
            pub const fn from_code(code: u8) -> Option<$name> {
                if (code as usize) < $name::COUNT {
                    Some($name::ALL[code as usize])
                } else {
                    None
                }
            }

            /// The name in logs, counters, metrics and files.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The one named `name`, if any.
            pub fn from_name(name: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|label| label.as_str() == name)
            }
        }

        // The codes run 0, 1, 2... in the order written, and the names are distinct.
        const _: () = {
            let mut i = 0;
            while i < $name::COUNT {
                assert!($name::ALL[i] as usize == i, "codes must run 0, 1, 2... in order");
                let mut j = 0;
                while j < i {
                    let (a, b) = ($name::ALL[i].as_str().as_bytes(), $name::ALL[j].as_str().as_bytes());
                    let mut same = a.len() == b.len();
                    let mut k = 0;
                    while same && k < a.len() {
                        same = a[k] == b[k];
                        k += 1;
                    }
                    assert!(!same, "two labels share a name");
                    j += 1;
                }
                i += 1;
            }
        };

        impl ::core::cmp::PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
