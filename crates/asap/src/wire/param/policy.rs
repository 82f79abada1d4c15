//! Pool Member Selection Policy parameter (0x0008). Spec §5.1; RFC 5356 §3.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x0008           |        Length = 8/12/16       |
//! +-------------------------------+-------------------------------+
//! |                         Policy Type                           |
//! +---------------------------------------------------------------+
//! :            policy-specific u32 values (weight, load, ...)     :
//! +---------------------------------------------------------------+
//! ```
//!
//! Policy types in [`PolicyType::PRIVATE`] (0xFF000000–0xFFFFFFFE, the project's private
//! range, docs/PROTOCOL-EXTENSIONS.md) carry up to [`MAX_PRIVATE_POLICY_VALUE_LEN`] opaque
//! bytes after the type, kept byte for byte ([`Policy::Private`]); any other unknown type
//! is Invalid Values (0x3) as before.

use std::fmt;
use std::ops::RangeInclusive;

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::DecodeError;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// A policy type number as sent on the wire (spec §5.1). A newtype rather than an enum so
/// that an unknown type can be carried into an error report.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyType(pub u32);

impl PolicyType {
    /// Round Robin.
    pub const ROUND_ROBIN: Self = Self(0x0000_0001);
    /// Weighted Round Robin.
    pub const WEIGHTED_ROUND_ROBIN: Self = Self(0x0000_0002);
    /// Random.
    pub const RANDOM: Self = Self(0x0000_0003);
    /// Weighted Random.
    pub const WEIGHTED_RANDOM: Self = Self(0x0000_0004);
    /// Priority.
    pub const PRIORITY: Self = Self(0x0000_0005);
    /// Least Used.
    pub const LEAST_USED: Self = Self(0x4000_0001);
    /// Least Used with Degradation.
    pub const LEAST_USED_DEGRADATION: Self = Self(0x4000_0002);
    /// Priority Least Used.
    pub const PRIORITY_LEAST_USED: Self = Self(0x4000_0003);
    /// Randomized Least Used.
    pub const RANDOMIZED_LEAST_USED: Self = Self(0x4000_0004);

    /// The project's private range (docs/PROTOCOL-EXTENSIONS.md): types a deployment
    /// defines for itself. Their values travel opaque; a registry without a selector for
    /// one selects round robin ([`crate::policy::PolicyRegistry::selector`]). 0xFFFFFFFF
    /// stays reserved.
    pub const PRIVATE: RangeInclusive<u32> = 0xFF00_0000..=0xFFFF_FFFE;

    /// Adaptive policies (0x4000xxxx) need PEs to re-register when their load changes.
    /// Private types are not: their bits mean nothing to rsp.
    pub const fn is_adaptive(self) -> bool {
        self.0 & 0x4000_0000 != 0 && !self.is_private()
    }

    /// Whether the type is in [`Self::PRIVATE`].
    pub const fn is_private(self) -> bool {
        self.0 >= *Self::PRIVATE.start() && self.0 <= *Self::PRIVATE.end()
    }

    /// The short name used on command lines and in logs, for the nine RFC types.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::ROUND_ROBIN => "rr",
            Self::WEIGHTED_ROUND_ROBIN => "wrr",
            Self::RANDOM => "rand",
            Self::WEIGHTED_RANDOM => "wrand",
            Self::PRIORITY => "pri",
            Self::LEAST_USED => "lu",
            Self::LEAST_USED_DEGRADATION => "lud",
            Self::PRIORITY_LEAST_USED => "plu",
            Self::RANDOMIZED_LEAST_USED => "rlu",
            _ => return None,
        })
    }
}

impl fmt::Debug for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "PolicyType({n})"),
            None => write!(f, "PolicyType({:#010x})", self.0),
        }
    }
}

/// A load or load degradation: a fraction where `0` is 0 % and `u32::MAX` is 100 %.
pub type Load = u32;

/// Most policy-specific bytes of a [`Policy::Private`]: three u32 values, more than any
/// RFC policy has (two). The bound keeps [`Policy`] a small `Copy` value (20 bytes, from
/// 12), held by every PE entry of a registrar's handlespace. A longer value is Invalid
/// Values (0x3).
pub const MAX_PRIVATE_POLICY_VALUE_LEN: usize = 12;

/// The policy-specific bytes of a private policy type, as sent (opaque to rsp).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrivateValues {
    len: u8,
    // Bytes past `len` are always 0, so the derived comparisons are the bytes'.
    bytes: [u8; MAX_PRIVATE_POLICY_VALUE_LEN],
}

impl PrivateValues {
    /// `None` when longer than [`MAX_PRIVATE_POLICY_VALUE_LEN`].
    pub fn new(value: &[u8]) -> Option<Self> {
        let mut bytes = [0; MAX_PRIVATE_POLICY_VALUE_LEN];
        bytes.get_mut(..value.len())?.copy_from_slice(value);
        Some(Self {
            len: u8::try_from(value.len()).ok()?,
            bytes,
        })
    }

    /// The bytes as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for PrivateValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateValues(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// One of the nine RFC 5356 policies with its per-PE values (spec §5.1), or a policy of the
/// project's private range with its values kept opaque. Any other type is Invalid Values
/// (cause 0x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Round Robin (0x00000001).
    RoundRobin,
    /// Weighted Round Robin (0x00000002): selected `weight` times per round.
    WeightedRoundRobin {
        /// Selections per round.
        weight: u32,
    },
    /// Random (0x00000003).
    Random,
    /// Weighted Random (0x00000004): probability proportional to `weight`; 0 is never selected.
    WeightedRandom {
        /// Relative weight.
        weight: u32,
    },
    /// Priority (0x00000005): highest `priority` first.
    Priority {
        /// Higher is preferred.
        priority: u32,
    },
    /// Least Used (0x40000001).
    LeastUsed {
        /// Current load.
        load: Load,
    },
    /// Least Used with Degradation (0x40000002).
    LeastUsedDegradation {
        /// Current load.
        load: Load,
        /// Added to the selector's copy of the load each time the PE is selected.
        degradation: Load,
    },
    /// Priority Least Used (0x40000003).
    PriorityLeastUsed {
        /// Current load.
        load: Load,
        /// Static penalty added to the load.
        degradation: Load,
    },
    /// Randomized Least Used (0x40000004): probability proportional to the free capacity.
    RandomizedLeastUsed {
        /// Current load.
        load: Load,
    },
    /// A type of the private range [`PolicyType::PRIVATE`] (docs/PROTOCOL-EXTENSIONS.md),
    /// its values as sent: a selector registered for the type reads them.
    Private {
        /// The type, in [`PolicyType::PRIVATE`].
        policy_type: PolicyType,
        /// The policy-specific bytes after the type.
        values: PrivateValues,
    },
}

impl Policy {
    /// The wire policy type of this policy.
    pub const fn policy_type(&self) -> PolicyType {
        match self {
            Self::RoundRobin => PolicyType::ROUND_ROBIN,
            Self::WeightedRoundRobin { .. } => PolicyType::WEIGHTED_ROUND_ROBIN,
            Self::Random => PolicyType::RANDOM,
            Self::WeightedRandom { .. } => PolicyType::WEIGHTED_RANDOM,
            Self::Priority { .. } => PolicyType::PRIORITY,
            Self::LeastUsed { .. } => PolicyType::LEAST_USED,
            Self::LeastUsedDegradation { .. } => PolicyType::LEAST_USED_DEGRADATION,
            Self::PriorityLeastUsed { .. } => PolicyType::PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsed { .. } => PolicyType::RANDOMIZED_LEAST_USED,
            Self::Private { policy_type, .. } => *policy_type,
        }
    }

    /// A private policy: `None` when `policy_type` is not in [`PolicyType::PRIVATE`] or
    /// `values` is longer than [`MAX_PRIVATE_POLICY_VALUE_LEN`].
    pub fn private(policy_type: PolicyType, values: &[u8]) -> Option<Self> {
        if !policy_type.is_private() {
            return None;
        }
        Some(Self::Private {
            policy_type,
            values: PrivateValues::new(values)?,
        })
    }
}

impl Policy {
    /// The policy-specific values after the type, in wire order (spec §5.1); none for a
    /// private type (its bytes are written as they came).
    fn values(&self) -> ([u32; 2], usize) {
        match *self {
            Self::RoundRobin | Self::Random | Self::Private { .. } => ([0, 0], 0),
            Self::WeightedRoundRobin { weight } | Self::WeightedRandom { weight } => {
                ([weight, 0], 1)
            }
            Self::Priority { priority } => ([priority, 0], 1),
            Self::LeastUsed { load } | Self::RandomizedLeastUsed { load } => ([load, 0], 1),
            Self::LeastUsedDegradation { load, degradation }
            | Self::PriorityLeastUsed { load, degradation } => ([load, degradation], 2),
        }
    }

    /// How many u32 values follow the type for `ty`; `None` for a non-RFC type.
    const fn value_count(ty: PolicyType) -> Option<usize> {
        Some(match ty {
            PolicyType::ROUND_ROBIN | PolicyType::RANDOM => 0,
            PolicyType::WEIGHTED_ROUND_ROBIN
            | PolicyType::WEIGHTED_RANDOM
            | PolicyType::PRIORITY
            | PolicyType::LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED => 1,
            PolicyType::LEAST_USED_DEGRADATION | PolicyType::PRIORITY_LEAST_USED => 2,
            _ => return None,
        })
    }
}

impl Param for Policy {
    fn param_type(&self) -> ParamType {
        ParamType::POLICY
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::POLICY
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u32(self.policy_type().0);
        let (v, n) = self.values();
        for x in &v[..n] {
            w.u32(*x);
        }
        if let Self::Private { values, .. } = self {
            w.bytes(values.as_bytes());
        }
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let ty = PolicyType(r.u32()?);
        if ty.is_private() {
            // The project's private range: the rest is the policy's, kept as sent.
            return Self::private(ty, r.rest()).ok_or_else(|| {
                p.invalid(p.offset() + 2, "private policy value longer than 12 bytes")
            });
        }
        // Otherwise only the nine RFC 5356 types (spec §5.1 [P]); Invalid Values quotes
        // the parameter.
        let n = Self::value_count(ty).ok_or_else(|| p.invalid(at, "unknown policy type"))?;
        if r.remaining() != 4 * n {
            return Err(p.invalid(p.offset() + 2, "length does not match the policy type"));
        }
        let a = if n > 0 { r.u32()? } else { 0 };
        let b = if n > 1 { r.u32()? } else { 0 };
        Ok(match ty {
            PolicyType::ROUND_ROBIN => Self::RoundRobin,
            PolicyType::WEIGHTED_ROUND_ROBIN => Self::WeightedRoundRobin { weight: a },
            PolicyType::RANDOM => Self::Random,
            PolicyType::WEIGHTED_RANDOM => Self::WeightedRandom { weight: a },
            PolicyType::PRIORITY => Self::Priority { priority: a },
            PolicyType::LEAST_USED => Self::LeastUsed { load: a },
            PolicyType::LEAST_USED_DEGRADATION => Self::LeastUsedDegradation {
                load: a,
                degradation: b,
            },
            PolicyType::PRIORITY_LEAST_USED => Self::PriorityLeastUsed {
                load: a,
                degradation: b,
            },
            _ => Self::RandomizedLeastUsed { load: a },
        })
    }
}
