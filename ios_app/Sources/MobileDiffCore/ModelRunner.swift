/// Runs the three networks of a bundle on some backend (Core ML on iOS; recorded tensors
/// in the tests). The pipeline does everything else.
///
/// Tensors are float32, row-major, in the manifest's shapes and layouts; the runner maps
/// them to its runtime's input and output names and dtypes (the manifest's `inputs` /
/// `outputs`) and checks nothing the pipeline already checks.
public protocol ModelRunner: AnyObject {
    /// Loads (compiles, warms) one network. The pipeline calls it once per network before
    /// the first image and times it; a runner that loads lazily or eagerly may do nothing.
    func load(_ component: ComponentRole) throws

    /// Token ids `[B, L]` -> context `[B, L, D]`.
    func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor

    /// Latents `[B, C, h, w]`, timestep `[B]`, context `[B, L, D]` -> model output `[B, C, h, w]`.
    /// A UNet whose manifest input is `step_index` (fold_timesteps) gets the step index as
    /// `timestep`; the runner casts it to the manifest's dtype.
    func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor

    /// Scaled latents `[1, C, h, w]` -> image `[1, 3, H, W]` in [-1, 1].
    func vaeDecoder(latents: Tensor) throws -> Tensor
}

extension ModelRunner {
    public func load(_ component: ComponentRole) throws {}
}
