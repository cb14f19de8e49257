//! Verdict classes and decisions: the vocabulary shared by the supervisor (which classifies an
//! exec target) and the policy (which turns a class into allow, alert or deny).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an exec target is, relative to the container's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VerdictClass {
    /// A file of a lower (image) layer, untouched.
    #[serde(rename = "image file")]
    ImageFile,
    /// Copied up by touch/chmod/chown; content identical to the image file at that path.
    #[serde(rename = "image file, metadata changed")]
    MetadataCopyUp,
    /// Content identical to an image file that was not executable in the image.
    #[serde(rename = "mode drift")]
    ModeDrift,
    /// New path (upper layer, volume, tmpfs), content equal to a file of the image.
    #[serde(rename = "relocated image binary")]
    RelocatedImageBinary,
    /// Same path as an image file, different content.
    #[serde(rename = "modified image file")]
    ModifiedImageFile,
    /// Not in the image at all.
    #[serde(rename = "new file")]
    NewFile,
    /// memfd, deleted file, or an anonymous fd executed with `AT_EMPTY_PATH`.
    #[serde(rename = "fileless")]
    Fileless,
    /// The image's dynamic loader run with a drifted program as its argument.
    #[serde(rename = "loader trick")]
    LoaderTrick,
    /// The image's dynamic loader, untouched, run directly (`ld.so PROGRAM`) with an image file
    /// (or nothing it could load) as its program. Allowed by default (`directLoader`).
    #[serde(rename = "direct loader")]
    DirectLoader,
    /// The supervisor could not classify the target (it vanished, a read failed, a decision
    /// timed out); the failure policy answered.
    #[serde(rename = "undecided")]
    Undecided,
}

impl VerdictClass {
    /// Every class, in declaration order (`ALL[class as usize] == class`).
    pub const ALL: [VerdictClass; 10] = [
        VerdictClass::ImageFile,
        VerdictClass::MetadataCopyUp,
        VerdictClass::ModeDrift,
        VerdictClass::RelocatedImageBinary,
        VerdictClass::ModifiedImageFile,
        VerdictClass::NewFile,
        VerdictClass::Fileless,
        VerdictClass::LoaderTrick,
        VerdictClass::DirectLoader,
        VerdictClass::Undecided,
    ];

    /// The class's name as alerts and documents spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictClass::ImageFile => "image file",
            VerdictClass::MetadataCopyUp => "image file, metadata changed",
            VerdictClass::ModeDrift => "mode drift",
            VerdictClass::RelocatedImageBinary => "relocated image binary",
            VerdictClass::ModifiedImageFile => "modified image file",
            VerdictClass::NewFile => "new file",
            VerdictClass::Fileless => "fileless",
            VerdictClass::LoaderTrick => "loader trick",
            VerdictClass::DirectLoader => "direct loader",
            VerdictClass::Undecided => "undecided",
        }
    }

    /// Whether the class is drift by definition (as opposed to an image file or a class whose
    /// treatment is an option of the policy).
    pub fn is_drift(self) -> bool {
        matches!(
            self,
            VerdictClass::ModifiedImageFile
                | VerdictClass::NewFile
                | VerdictClass::Fileless
                | VerdictClass::LoaderTrick
        )
    }
}

impl fmt::Display for VerdictClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to one exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The exec runs, nothing is reported.
    Allow,
    /// The exec runs and an alert is raised.
    Alert,
    /// The exec is denied (EPERM) and an alert is raised.
    Deny,
}

/// How the failure policy answers when the supervisor cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Deny the exec (or refuse the container when the supervisor is unreachable).
    #[default]
    Closed,
    /// Allow the exec (or start the container without the filter) and alert.
    Open,
}
